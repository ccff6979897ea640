"""What every format converter returns, and the checks they share.

A format module exposes ``convert_<family>(src, **options) -> Converted``: it reads and
verifies, it writes nothing. :func:`converters.api.convert` writes the result with
``ronan_jax.models.checkpoint.save_generator`` (and its encoder, if any, with
``write_encoder``) and records provenance in the model card.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from converters.errors import ArchitectureError, preview

CONVERTER_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class Converted:
    """A converted generator before it is written.

    Attributes:
        architecture: key of ``ronan_jax.models.registry.ARCHITECTURES``.
        config: JSON-able architecture config (the card's ``config``).
        variables: Flax variables, NumPy leaves, checked against a fresh template.
        summary: what the converter found (inferred sizes, where the state dict was, ...).
        sources: the files read, ``{path: sha256}``.
        encoder: the source's own encoder, when it has one (a diffusers ``AutoencoderKL``'s),
            written as the checkpoint's encoder (warm starts).
    """

    architecture: str
    config: dict[str, Any]
    variables: Any
    summary: dict[str, Any]
    sources: dict[str, str]
    encoder: ConvertedEncoder | None = None


@dataclasses.dataclass(frozen=True)
class ConvertedEncoder:
    """A converted encoder before it is written (the card's ``encoder`` entry).

    Attributes:
        architecture: key of ``ronan_jax.models.registry.ENCODER_ARCHITECTURES``.
        config: its JSON-able config.
        variables: its Flax variables, NumPy leaves.
        provenance: card fields saying where it came from (``source: "converted"``, ...).
    """

    architecture: str
    config: dict[str, Any]
    variables: Any
    provenance: dict[str, Any]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fill_template(template: Any, values: Mapping[str, np.ndarray], source: str) -> Any:
    """``template`` (a fresh Flax variable tree, or its ``jax.eval_shape``) with every leaf
    replaced by ``values[keystr(path)]``, cast to the template's dtype.

    Raises :class:`ArchitectureError` listing every leaf whose converted tensor is missing or
    has another shape, and every converted tensor the template has no place for.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out, missing, wrong = [], [], []
    want_keys = set()
    for path, leaf in leaves:
        k = jax.tree_util.keystr(path)
        want_keys.add(k)
        arr = values.get(k)
        if arr is None:
            missing.append(k)
            out.append(None)
            continue
        if tuple(arr.shape) != tuple(leaf.shape):
            wrong.append(f"{k} {tuple(arr.shape)} != {tuple(leaf.shape)}")
        out.append(np.asarray(arr, dtype=leaf.dtype))
    extra = sorted(set(values) - want_keys)
    problems = []
    if missing:
        problems.append(f"no tensor for {preview(missing)}")
    if wrong:
        problems.append(f"wrong shapes {preview(wrong)}")
    if extra:
        problems.append(f"no place for {preview(extra)}")
    if problems:
        raise ArchitectureError(f"{source}: converted tensors do not fit the Flax model: " + "; ".join(problems))
    return jax.tree_util.tree_unflatten(treedef, out)


def abstract_template(init: Any, *args: Any) -> Any:
    """Shapes and dtypes of ``init(*args)`` without running it (no compilation)."""
    return jax.eval_shape(init, *args)


def flax_key(*parts: str) -> str:
    """The ``jax.tree_util.keystr`` of a nested-dict path: ``['params']['conv']['kernel']``."""
    return "".join(f"[{p!r}]" for p in parts)
