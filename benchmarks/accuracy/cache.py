"""Per-image inversion losses kept on disk, so tables share work and stopped runs resume.

One JSON-lines file per (generator, result-changing settings): a header line with the
identity, then one line per image ``{"sha": ..., "loss": ..., "steps": ..., "device": ..., "seconds": ...}``,
appended after every chunk (``device``: the accelerator kind that measured it, as evidence;
``seconds``: the chunk's wall time per image; older records lack them). The key is the image's SHA-256 over its uint8 pixels and shape, so the same
image met in two tables (or two rows) is inverted once. Several processes may append to one
file at once (:mod:`.workers`): each chunk is one ``O_APPEND`` write, headed by the identity
line when the file is empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ronan_jax.attribution.classes import ClassInversion, invert_by_class_rule, num_classes
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import invert
from ronan_jax.engine.program import images_per_call
from ronan_jax.engine.robust import recodes, without_codec

CACHE_DIR = Path(__file__).resolve().parent / "cache"


def image_sha(image_u8: np.ndarray) -> str:
    """Content key of one uint8 HWC image."""
    h = hashlib.sha256(str(image_u8.shape).encode())
    h.update(np.ascontiguousarray(image_u8, np.uint8).tobytes())
    return h.hexdigest()


def identity(gen: Generator, config: InversionConfig) -> dict:
    """What determines a loss besides the image: the weights and the result settings (and,
    for a warm start, the encoder it starts from)."""
    out = {"generator": gen.name, "param_hash": gen.param_hash,
           "settings": config.result_settings()}
    if config.warm_start and gen.encoder is not None:
        out["encoder_hash"] = gen.encoder.param_hash
    return out


def cache_path(gen: Generator, config: InversionConfig, root: Path | None = None) -> Path:
    ident = json.dumps(identity(gen, config), sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return (root or CACHE_DIR) / f"{gen.name}-{digest}.jsonl"


def read(path: Path, ident: dict) -> dict[str, dict]:
    """Records of a cache file (empty if absent); refuses a file of another identity."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    head = json.loads(lines[0])
    if head.get("identity") != ident:
        raise ValueError(f"{path} holds losses of another generator or settings")
    out = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: recompute that image
            continue
        if "sha" in rec:
            out[rec["sha"]] = rec
    return out


def append(path: Path, ident: dict, records: list[dict]) -> None:
    """Add records in one append (whole lines, even with other writers at work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if os.fstat(fd).st_size == 0:  # new, or left empty by a killed writer: header first
            # Two writers may both see an empty file; read() skips the second header.
            body = json.dumps({"identity": ident}, sort_keys=True) + "\n" + body
        os.write(fd, body.encode())
    finally:
        os.close(fd)


class NotCached(LookupError):
    """Some images of a set have no cached loss and inverting was not allowed."""


def _open(gen: Generator, images_u8: np.ndarray, config: InversionConfig,
          root: Path | None) -> tuple[Generator, dict, Path, dict[str, dict]]:
    """The generator adapted to the images' shape, its cache identity, file and records."""
    gen = gen.for_shape(tuple(images_u8.shape[1:]))
    ident = identity(gen, config)
    path = cache_path(gen, config, root)
    return gen, ident, path, read(path, ident)


def codec_free(config: InversionConfig, codecs: np.ndarray | None) -> InversionConfig:
    """The settings a set's losses are cached under: a mode that re-codes as JPEG, for a set
    that was not saved as JPEG, computes the mode without the codec (its stage passes such
    images unchanged: ``tests/test_jpeg.py`` checks that tone+jpeg's losses equal tone's bit
    for bit, jpeg's equal off's to float rounding), so those sets share that mode's cache."""
    if recodes(config.robust) and (codecs is None or not np.any(np.asarray(codecs)[:, 0] > 0.5)):
        return config.replace(robust=without_codec(config.robust))
    return config


def record_keys(images_u8: np.ndarray, gen: Generator, config: InversionConfig,
                classes: np.ndarray | None, codecs: np.ndarray | None = None) -> list[str]:
    """The cache key of each image: its content, plus its class when a conditional model
    inverts it with its known class (the loss then depends on the class too), plus its JPEG
    tables when a robust mode re-codes with them."""
    shas = [image_sha(im) for im in images_u8]
    if codecs is not None and recodes(config.robust):
        shas = [s if spec[0] < 0.5 else
                f"{s}:jpeg{hashlib.sha256(np.asarray(spec, np.float32).tobytes()).hexdigest()[:12]}"
                for s, spec in zip(shas, codecs, strict=True)]
    if num_classes(gen) and config.class_rule == "known":
        if classes is None:
            raise ValueError(f"{gen.name} is conditional: the images' classes are needed")
        shas = [f"{s}:class{int(k)}" for s, k in zip(shas, classes, strict=True)]
    return shas


def losses(
    gen: Generator,
    images_u8: np.ndarray,
    config: InversionConfig,
    label: str = "",
    log: Callable[[str], None] = print,
    root: Path | None = None,
    cached_only: bool = False,
    classes: np.ndarray | None = None,
    codecs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best losses and steps run of ``images_u8`` (N, H, W, C) inverted on ``gen``
    (``codecs``: the images' JPEG specs, for a robust mode that re-codes).

    ``gen`` is adapted to the images' shape; images already in the cache are not inverted.
    With ``cached_only``, missing images raise :class:`NotCached` instead. A conditional
    model inverts by ``config.class_rule`` (``classes``: each image's known class); its
    records also hold the class used (``"class"``) and, under "min", every class's loss
    (``"class_losses"``), read back by :func:`class_records`.
    """
    images_u8 = np.asarray(images_u8, np.uint8)
    config = codec_free(config, codecs)
    gen, ident, path, done = _open(gen, images_u8, config, root)
    shas = record_keys(images_u8, gen, config, classes, codecs)
    todo = [i for i, s in enumerate(shas) if s not in done]
    if todo and cached_only:
        raise NotCached(f"{label or 'a set'} on {gen.name}: {len(todo)} of {len(shas)} "
                        "images not measured yet")
    chunk = images_per_call(config)
    t0 = time.time()
    device = jax.devices()[0].device_kind
    for lo in range(0, len(todo), chunk):
        idx = todo[lo : lo + chunk]
        t_chunk = time.time()
        batch = images_u8[idx].astype(np.float32) / np.float32(255.0)
        # codecs only where a set has them, so a stand-in inverter needs no such argument
        extra = {} if codecs is None else {"codecs": np.asarray(codecs)[idx]}
        if num_classes(gen):
            cls = None if classes is None else np.asarray(classes)[idx]
            out = invert_by_class_rule(gen, batch, config, cls, **extra)
        else:
            out = ClassInversion(invert(gen, batch, config, **extra), None, None)
        res = out.result
        per_image = (time.time() - t_chunk) / len(idx)  # includes a first call's compile
        recs = [
            {"sha": shas[i], "loss": float(res.loss[j]), "steps": int(np.sum(res.steps_run[j])),
             "device": device, "seconds": round(per_image, 3)}
            for j, i in enumerate(idx)
        ]
        for j, rec in enumerate(recs):
            if out.winning_class is not None:
                rec["class"] = int(out.winning_class[j])
            if out.class_losses is not None:
                rec["class_losses"] = [float(v) for v in out.class_losses[j]]
        append(path, ident, recs)
        done.update({r["sha"]: r for r in recs})
        n_done = lo + len(idx)
        log(f"  {label} on {gen.name}: {n_done}/{len(todo)} new images, "
            f"{time.time() - t0:.0f} s")
    loss = np.array([done[s]["loss"] for s in shas], np.float64)
    steps = np.array([done[s]["steps"] for s in shas], np.int64)
    return loss, steps


def seconds(gen: Generator, images_u8: np.ndarray, config: InversionConfig,
            classes: np.ndarray | None = None, root: Path | None = None,
            codecs: np.ndarray | None = None) -> np.ndarray:
    """Wall seconds each image's inversion took as recorded (its chunk's time per image,
    first-call compile included; NaN where a record has none)."""
    recs = _records(gen, images_u8, config, classes, root, codecs)
    return np.array([np.nan if r is None else r.get("seconds", np.nan) for r in recs], np.float64)


def _records(gen: Generator, images_u8: np.ndarray, config: InversionConfig,
             classes: np.ndarray | None, root: Path | None,
             codecs: np.ndarray | None = None) -> list[dict | None]:
    """The cache record of each image (None where it has none)."""
    images_u8 = np.asarray(images_u8, np.uint8)
    config = codec_free(config, codecs)
    gen, _, _, done = _open(gen, images_u8, config, root)
    return [done.get(s) for s in record_keys(images_u8, gen, config, classes, codecs)]


def class_records(gen: Generator, images_u8: np.ndarray, config: InversionConfig,
                  classes: np.ndarray | None = None, root: Path | None = None,
                  codecs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The class each cached image was judged with (``[N]``, -1 where none) and, under
    class rule "min", every class's loss (``[N, C]``; None otherwise)."""
    recs = _records(gen, images_u8, config, classes, root, codecs)
    if any(r is None for r in recs):
        raise KeyError(f"{gen.name}: images without a cached record")
    winner = np.array([r.get("class", -1) for r in recs], np.int64)
    if not all("class_losses" in r for r in recs):
        return winner, None
    return winner, np.array([r["class_losses"] for r in recs], np.float64)


def seed(gen: Generator, images_u8: np.ndarray, config: InversionConfig, loss: np.ndarray,
         steps: int | np.ndarray, root: Path | None = None, source: str | None = None) -> int:
    """Enter losses measured elsewhere (a shipped profile's, or composed from other cached
    runs) for images not yet cached.

    ``steps``: optimisation steps the source ran per image, all restarts together (one
    number, or one per image). ``source``: how the losses were obtained, kept in each record.
    """
    images_u8 = np.asarray(images_u8, np.uint8)
    _, ident, path, done = _open(gen, images_u8, config, root)
    steps = np.broadcast_to(np.asarray(steps, np.int64), (len(images_u8),))
    recs = []
    for s, v, k in zip((image_sha(im) for im in images_u8), loss, steps, strict=True):
        if s in done:
            continue
        rec = {"sha": s, "loss": float(v), "steps": int(k)}
        if source is not None:
            rec["source"] = source
        recs.append(rec)
    if recs:
        append(path, ident, recs)
    return len(recs)
