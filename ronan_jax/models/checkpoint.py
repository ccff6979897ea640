"""Generator checkpoints on disk: an orbax parameter tree plus a JSON model card.

Layout of a checkpoint directory::

    model_card.json   architecture, config, param_hash, provenance (training data, source file...)
                      and, when an encoder ships, ``encoder``: its architecture, config, param_hash
    params/           orbax StandardCheckpointer tree of the Flax variables
    encoder/          (optional) orbax tree of the encoder's variables (warm starts): one
                      trained by ``ronan encoder train`` or a converted VAE's own encoder

Used by the zoo (shipped weights) and the converters (PyTorch/diffusers imports); the CLI loads
either by path. Restored trees are checked leaf by leaf against a freshly initialised template
and against the card's parameter hash, so a damaged or mismatched checkpoint fails loudly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ronan_jax.engine.generator import Encoder, Generator, param_hash
from ronan_jax.models import encoder as encoder_model
from ronan_jax.models.registry import (
    ENCODER_ARCHITECTURES,
    get_architecture,
    get_encoder_architecture,
)

CARD_FILE = "model_card.json"
PARAMS_DIR = "params"
ENCODER_DIR = "encoder"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, damaged or does not match its model card."""


def _to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: np.asarray(a), tree)


def save_generator(
    path: str | Path,
    architecture: str,
    config: dict[str, Any],
    variables: Any,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``variables`` and a model card to ``path`` (created; must not exist).

    Returns the card as written (with ``architecture``, ``config`` and ``param_hash``).
    """
    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise CheckpointError(f"{path} exists and is not empty")
    check_tree(template_shapes(architecture, config), variables, source=str(path))
    variables = _to_numpy(variables)
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / PARAMS_DIR, variables)
    full = {
        **(card or {}),
        "architecture": architecture,
        "config": config,
        "param_hash": param_hash(variables),
    }
    (path / CARD_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card of a checkpoint directory."""
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"{path} is not a ronan-jax checkpoint (no {CARD_FILE})")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{card_path}: invalid JSON ({exc})") from exc


def load_variables(path: str | Path) -> tuple[dict[str, Any], Any]:
    """Card and verified variables of a checkpoint directory."""
    path = Path(path).absolute()
    card = read_card(path)
    abstract = template_shapes(card["architecture"], card["config"])
    variables = _restore_verified(path, PARAMS_DIR, abstract, card.get("param_hash"),
                                  "parameters", "parameter hash", "the weights were")
    return card, variables


def _restore_verified(path: Path, folder: str, abstract: Any, want_hash: Any, what: str,
                      hash_name: str, changed: str) -> Any:
    """Restore ``path/folder`` against ``abstract``, checked leaf by leaf and against the
    card's hash (``CheckpointError`` naming ``what`` otherwise)."""
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(path / folder, abstract)
    except Exception as exc:  # orbax raises many types for damaged trees
        # orbax's messages list whole trees over many lines; the first names the problem
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
        raise CheckpointError(f"{path}: cannot restore {what} ({first})") from exc
    variables = _to_numpy(variables)
    check_tree(abstract, variables, source=str(path) if folder == PARAMS_DIR else f"{path} ({folder})")
    digest = param_hash(variables)
    if digest != want_hash:
        raise CheckpointError(
            f"{path}: {hash_name} {digest[:12]} does not match the model card "
            f"({str(want_hash)[:12]}); {changed} changed or damaged"
        )
    return variables


def load_generator(path: str | Path, name: str | None = None) -> Generator:
    """A Generator from a checkpoint directory (zoo or converted), with its encoder when the
    card names one."""
    card, variables = load_variables(path)
    arch = get_architecture(card["architecture"])
    gen_name = name or card.get("name") or Path(path).name
    gen = arch.make(card["config"], variables, name=gen_name, checkpoint=str(path))
    if card.get("encoder") is not None:
        gen = gen.replace(encoder=load_encoder(path, card))
    return gen


def load_encoder(path: str | Path, card: dict[str, Any] | None = None) -> Encoder:
    """The verified encoder of a checkpoint directory (``CheckpointError`` if the card names
    none, or its weights are missing, damaged or not the card's). The card's ``architecture``
    picks the family (:data:`~ronan_jax.models.registry.ENCODER_ARCHITECTURES`); the entry's
    other fields (``training``, ``source``, ...) become the encoder's ``info``."""
    path = Path(path).absolute()
    card = card if card is not None else read_card(path)
    entry = card.get("encoder")
    if not isinstance(entry, dict) or entry.get("architecture") not in ENCODER_ARCHITECTURES:
        found = entry.get("architecture") if isinstance(entry, dict) else None
        raise CheckpointError(
            f"{path}: the model card names no known encoder (architecture {found!r}; "
            f"known: {', '.join(sorted(ENCODER_ARCHITECTURES))})"
        )
    arch = get_encoder_architecture(entry["architecture"])
    try:
        abstract = arch.template(entry["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid encoder config in the model card ({exc})") from exc
    variables = _restore_verified(path, ENCODER_DIR, abstract, entry.get("param_hash"),
                                  "the encoder", "encoder hash", "the encoder was")
    info = {k: v for k, v in entry.items() if k not in ("architecture", "config", "param_hash")}
    return arch.make(entry["config"], variables, **info)


def save_encoder(
    path: str | Path,
    config: encoder_model.EncoderConfig,
    variables: Any,
    training: dict[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Write a trained convolutional encoder into the checkpoint directory ``path`` and name
    it in the card (:func:`write_encoder` with its ``training`` record)."""
    return write_encoder(path, encoder_model.ARCHITECTURE, config.to_dict(), variables,
                         {"training": training or {}}, replace=replace)


def write_encoder(
    path: str | Path,
    architecture: str,
    config: dict[str, Any],
    variables: Any,
    provenance: dict[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Write an encoder of any :data:`~ronan_jax.models.registry.ENCODER_ARCHITECTURES`
    family into the checkpoint directory ``path`` and name it in the card.

    The model's own weights and ``param_hash`` are untouched. Refuses to overwrite an
    encoder unless ``replace``. The weights are written next to the old ones and swapped in,
    then the card is rewritten atomically, so a kill leaves the old encoder or the new one.
    Returns the card's ``encoder`` entry: ``architecture``, ``config``, ``param_hash`` and
    the ``provenance`` fields (``training`` of a trained one, ``source`` of a converted one).
    """
    path = Path(path).absolute()
    card = read_card(path)
    if card.get("encoder") is not None and not replace:
        raise CheckpointError(f"{path} already has an encoder (replace it explicitly)")
    try:
        template = get_encoder_architecture(architecture).template(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid {architecture} encoder config ({exc})") from exc
    check_tree(template, variables, source="encoder")
    variables = _to_numpy(variables)
    staging = path / (ENCODER_DIR + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(staging, variables)
    old = path / (ENCODER_DIR + ".old")
    if old.exists():
        shutil.rmtree(old)
    if (path / ENCODER_DIR).exists():
        (path / ENCODER_DIR).rename(old)
    staging.rename(path / ENCODER_DIR)
    entry = {
        **(provenance or {}),
        "architecture": architecture,
        "config": config,
        "param_hash": param_hash(variables),
    }
    card["encoder"] = entry
    tmp = path / (CARD_FILE + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    tmp.replace(path / CARD_FILE)
    if old.exists():
        shutil.rmtree(old)
    return entry


def template_shapes(architecture: str, config: dict[str, Any]) -> Any:
    """Shapes and dtypes of a fresh variable tree of the architecture (no computation)."""
    arch = get_architecture(architecture)
    try:
        return jax.eval_shape(lambda: arch.init(config, jax.random.key(0)))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        # An init that draws with NumPy cannot be traced: run it (cheap by design).
        return jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
            arch.init(config, jax.random.key(0)),
        )


def check_tree(template: Any, tree: Any, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected or misshapen leaf."""
    want = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(template)}
    have = {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if wrong:
        problems.append("wrong shape " + ", ".join(f"{k}: {have[k]} != {want[k]}" for k in wrong))
    if problems:
        raise CheckpointError(f"{source}: parameters do not match the architecture: " + "; ".join(problems))
