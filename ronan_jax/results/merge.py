"""Combining the results databases of one audit split over processes or hosts.

Shards are checked before anything is written: every one must hold results of the same
settings (one results key), otherwise :class:`ShardMismatchError` names the settings that
differ. :func:`missing_shards` tells which processes of a split run are not in a database.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ronan_jax.results.store import (
    NON_KEY_FIELDS,
    ResultStore,
    RunInfo,
    ShardMismatchError,
    StoreError,
    canonical_json,
    escape_text,
)


def _shard_keys(path: str) -> dict[str, dict[str, Any]]:
    """Config keys a shard holds (runs and results), each with the configuration of one of
    its runs (``{}`` for results without a run), checking it is a results database."""
    if not os.path.isfile(path):
        raise StoreError(f"no such shard database: {escape_text(path)}")
    with ResultStore(path, readonly=True) as store:
        keys: dict[str, dict[str, Any]] = {r.config_key: r.config for r in store.runs()}
        for k in store.result_keys():
            keys.setdefault(k, {})
        return keys


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted paths of a nested configuration -> canonical JSON of each leaf."""
    out: dict[str, str] = {}
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = canonical_json(value)
    return out


def describe_mismatch(
    configs: Mapping[str, Mapping[str, Mapping[str, Any]]],
    non_key_fields: Collection[str] = NON_KEY_FIELDS,
    limit: int = 6,
) -> str:
    """Name what differs between databases' configurations, for a refused merge.

    ``configs`` maps a database path to ``{config_key: configuration}``; the answer lists the
    result-affecting settings (dotted paths, e.g. ``settings.steps``) whose values differ,
    with each database's value, then every database's key.
    """
    entries = []
    for path, by_key in configs.items():
        name = escape_text(os.path.basename(os.fspath(path)))
        for key, config in by_key.items():
            label = name if len(by_key) == 1 else f"{name} [{key[:12]}]"
            kept = {k: v for k, v in config.items() if k not in non_key_fields}
            entries.append((label, _flatten(kept) if config else None))
    known = [(label, flat) for label, flat in entries if flat is not None]
    fields = sorted(set().union(*(flat for _, flat in known))) if known else []
    diffs = []
    for field_name in fields:
        values = [(label, flat.get(field_name, "(absent)")) for label, flat in known]
        if len({v for _, v in values}) > 1:
            diffs.append(f"{field_name} ({', '.join(f'{label}: {v}' for label, v in values)})")
    keys = "; ".join(
        f"{escape_text(os.path.basename(os.fspath(p)))}: {', '.join(k[:12] for k in sorted(ks)) or '(empty)'}"
        for p, ks in configs.items()
    )
    if not diffs:
        return f"shards hold results of different configurations (keys {keys})"
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return (
        "shards hold results of different configurations; differing settings: "
        + "; ".join(diffs[:limit]) + more + f" (keys {keys})"
    )


def merge(dst: str | os.PathLike[str], srcs: Iterable[str | os.PathLike[str]]) -> int:
    """Combine shard databases into `dst` (created if missing); return rows merged.

    Every shard (and `dst`, if it already has runs) must hold a single, common config key,
    otherwise ShardMismatchError is raised before anything is written. Each shard is merged
    in one transaction; runs are copied, and a row for an image already present replaces it
    unless that would replace a real verdict with an error. Merging again is harmless.
    """
    dst = os.fspath(dst)
    src_paths = [os.path.abspath(os.fspath(s)) for s in srcs]
    if os.path.abspath(dst) in src_paths:
        raise StoreError(f"cannot merge {dst} into itself")
    keys_by_shard = {src: _shard_keys(src) for src in src_paths}
    if os.path.exists(dst):
        keys_by_shard[dst] = _shard_keys(dst)
    if len(set().union(*keys_by_shard.values())) > 1:
        raise ShardMismatchError(describe_mismatch(keys_by_shard))
    with ResultStore(dst) as store:
        return sum(store.copy_from(src) for src in src_paths)


def missing_shards(runs: Iterable[RunInfo]) -> dict[int, list[int]]:
    """For each process count of a split run among ``runs``, the process ids that have no
    run in them (empty when every shard is there)."""
    split = {
        (int(s["count"]), int(s["index"]))
        for r in runs
        if isinstance(s := (r.config.get("info") or {}).get("shard"), dict)
    }
    out = {}
    for count in sorted({c for c, _ in split}):
        missing = sorted(set(range(count)) - {i for c, i in split if c == count})
        if missing:
            out[count] = missing
    return out
