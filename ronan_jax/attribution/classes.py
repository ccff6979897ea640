"""Class-conditional models: which class an image is inverted with (``config.class_rule``).

A conditional generator draws an image of one class; attributing an image to it needs that
class. ``"known"`` uses each image's given class, ``"min"`` RONAN's rule when the class is
unknown (``A(M, x) = min_k A(M_k, x)``, all classes inverted in one engine call), ``"zero"``
an all-zero class vector (what the StyleGAN authors' code feeds an unlabelled image).

A generator whose condition is already fixed (a class-conditioned one) counts as
unconditional here: its class is part of the model.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import InversionResult, invert

# The condition that makes a family's class vector all zeros. DCGAN one-hot encodes its
# label with ``jax.nn.one_hot``, which maps an out-of-range id (-1) to the zero vector, and
# so does StyleGAN2 (in the z space; its w and w+ spaces take no class).
_ZERO_CONDITION: dict[str, int] = {"dcgan": -1, "stylegan2": -1}


class ClassInversion(NamedTuple):
    """An inversion under a class rule: per-image results and the class each one used."""

    result: InversionResult  # per image, reduced to its winning class under "min"
    winning_class: np.ndarray | None  # [B] int64; None for unconditional models and "zero"
    class_losses: np.ndarray | None  # [B, C] best loss per class under "min", else None


def num_classes(generator: Generator) -> int:
    """How many classes ``generator`` takes per image (0: unconditional, or class fixed).

    The model builders set ``Generator.num_classes``: a conditional DCGAN or UNet without
    a fixed class, a StyleGAN2 in the z space (in w / w+ the class is part of w)."""
    return int(generator.num_classes)


def check_classes(generator: Generator, classes: np.ndarray | None, n: int) -> np.ndarray:
    """``classes`` as ``[n]`` int32 class ids, or ValueError naming the model, its class
    count and what is wrong (missing, wrong length, out of range, not integers)."""
    c = num_classes(generator)
    where = f"model {generator.name!r} is conditional with {c} classes"
    if classes is None:
        raise ValueError(f"{where}: give each image's class, or use class_rule 'min' or 'zero'")
    arr = np.asarray(classes)
    if arr.shape != (n,):
        raise ValueError(f"{where}: {n} images need {n} classes, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{where}: classes must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= c)
    if bad.any():
        raise ValueError(f"{where}: class {int(arr[bad][0])} is outside [0, {c})")
    return arr.astype(np.int32)


def zero_condition(generator: Generator, n: int) -> np.ndarray:
    """Per-image conditions giving an all-zero class vector; ValueError where the model
    family has none."""
    family = generator.info.get("architecture")
    if family not in _ZERO_CONDITION:
        raise ValueError(
            f"class_rule 'zero' is not supported for model {generator.name!r} "
            f"(architecture {family!r}); use 'known' or 'min'"
        )
    return np.full((n,), _ZERO_CONDITION[family], np.int32)


def _expanded_invert(
    generator: Generator,
    images: np.ndarray,
    class_ids: np.ndarray,
    config: InversionConfig,
    stop_below: np.ndarray | None,
    codecs: np.ndarray | None = None,
) -> InversionResult:
    """Invert image ``i`` once per class in ``class_ids[i]`` (``[B, K]``) in one engine call;
    results come back ``[B * K]``, image-major. Every copy gets its image's PRNG key (and
    JPEG spec), so each class's run equals inverting the image with that class alone."""
    b, k = class_ids.shape
    expanded = np.repeat(images, k, axis=0)
    conditions = generator.conditions_for_classes(class_ids.reshape(-1).astype(np.int32))
    stop = None
    if stop_below is not None:
        stop = np.repeat(np.broadcast_to(np.asarray(stop_below, np.float64), (b,)), k)
    expanded_codecs = None if codecs is None else np.repeat(np.asarray(codecs), k, axis=0)
    return invert(generator, expanded, config, conditions=conditions, stop_below=stop,
                  codecs=expanded_codecs)


def kept_classes(screen_losses: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` classes of each image (``[B, keep]``) with the lowest screening losses
    (``[B, C]``; NaN counts as the highest, ties keep the lower class)."""
    ranked = np.where(np.isnan(screen_losses), np.inf, screen_losses)
    return np.argsort(ranked, axis=1, kind="stable")[:, :keep]


def min_over_classes(
    generator: Generator,
    images: np.ndarray,
    config: InversionConfig,
    stop_below: np.ndarray | None = None,
    codecs: np.ndarray | None = None,
) -> ClassInversion:
    """Invert each image once per class in one engine call and keep its best class.

    The batch is expanded to B*C images (image ``i`` with class ``k`` at row ``i*C + k``);
    every copy of an image gets the image's own PRNG key, so each class's result equals
    inverting with that class alone. ``stop_below`` (per image) stops each class's run once
    below it, which is exact for the minimum too.

    With ``config.class_screen_steps`` every class first runs only that many steps; the
    ``class_screen_keep`` best then run the full budget from the same starts (so a kept
    class's loss equals its loss under the full minimum). ``class_losses`` holds the full
    runs' losses of the kept classes and the screening losses of the others.
    """
    c = num_classes(generator)
    if c < 1:
        raise ValueError(f"model {generator.name!r} is not conditional: no classes to minimise over")
    images = np.asarray(images, np.float32)
    b = images.shape[0]
    every = np.tile(np.arange(c, dtype=np.int64), (b, 1))
    keep = min(config.class_screen_keep, c) if config.class_screen_steps else c
    if keep == c:
        res = _expanded_invert(generator, images, every, config, stop_below, codecs)
        losses, kept, steps = np.asarray(res.loss).reshape(b, c), every, 0
    else:
        screen_config = config.replace(
            steps=config.class_screen_steps, class_screen_steps=0, halving_at=(), plateau_window=0
        )
        screen = _expanded_invert(generator, images, every, screen_config, stop_below, codecs)
        losses = np.asarray(screen.loss, np.float64).reshape(b, c)
        kept = kept_classes(losses, keep)
        res = _expanded_invert(generator, images, kept, config, stop_below, codecs)
        np.put_along_axis(losses, kept, np.asarray(res.loss, np.float64).reshape(b, keep), axis=1)
        losses = losses.astype(np.asarray(res.loss).dtype)
        steps = np.asarray(screen.steps_run).reshape(b, c, -1).sum(axis=1)
    full = np.asarray(res.loss, np.float64).reshape(b, keep)
    best = np.argmin(np.where(np.isnan(full), np.inf, full), axis=1)
    reduced = InversionResult(*(np.asarray(field)[np.arange(b) * keep + best] for field in res))
    # The work done is every run's: steps_run sums the restarts' steps over the classes.
    steps = steps + np.asarray(res.steps_run).reshape(b, keep, -1).sum(axis=1)
    winner = kept[np.arange(b), best]
    return ClassInversion(reduced._replace(steps_run=steps), winner.astype(np.int64), losses)


def describe_class_rule(generator: Generator, config: InversionConfig) -> str:
    """The class rule and its cost in one phrase ("" for an unconditional model)."""
    c = num_classes(generator)
    if not c:
        return ""
    if config.class_rule != "min":
        return f"class rule {config.class_rule}"
    keep = min(config.class_screen_keep, c)
    if config.class_screen_steps and keep < c:
        cost = (c * config.class_screen_steps + keep * config.steps) / config.steps
        return (f"class unknown: all {c} classes screened for {config.class_screen_steps} steps, "
                f"the best {keep} run on ({cost:.2g}x the inversions of one class; the full "
                f"minimum costs {c}x)")
    return f"class unknown: minimum over {c} classes ({c}x the inversions)"


def check_class_inputs(
    generator: Generator, config: InversionConfig, classes: np.ndarray | None, n: int
) -> None:
    """Raise ValueError now (before any inversion) if ``classes`` do not suit ``generator``
    under ``config.class_rule``: given for an unconditional model, or, under "known",
    missing or out of range for a conditional one."""
    c = num_classes(generator)
    if c == 0 and classes is not None:
        raise ValueError(f"model {generator.name!r} is not conditional, but classes were given")
    if c and config.class_rule == "known":
        check_classes(generator, classes, n)
    if c and config.class_rule == "zero":
        zero_condition(generator, n)


def invert_by_class_rule(
    generator: Generator,
    images: np.ndarray,
    config: InversionConfig,
    classes: np.ndarray | None = None,
    stop_below: np.ndarray | None = None,
    codecs: np.ndarray | None = None,
) -> ClassInversion:
    """Invert ``images`` on ``generator`` choosing each image's class by ``config.class_rule``.

    Unconditional models are inverted exactly as by :func:`invert` (``classes`` must then be
    None); "known" needs ``classes``; "min" ignores them. ``codecs``: each image's JPEG spec
    (see :func:`invert`)."""
    images = np.asarray(images, np.float32)
    check_class_inputs(generator, config, classes, images.shape[0])
    c = num_classes(generator)
    if c == 0:
        return ClassInversion(invert(generator, images, config, stop_below=stop_below, codecs=codecs), None, None)
    if config.class_rule == "min":
        return min_over_classes(generator, images, config, stop_below, codecs)
    if config.class_rule == "zero":
        cond = generator.conditions_for_classes(zero_condition(generator, images.shape[0]))
        return ClassInversion(invert(generator, images, config, conditions=cond, stop_below=stop_below,
                                      codecs=codecs), None, None)
    known = check_classes(generator, classes, images.shape[0])
    res = invert(generator, images, config, conditions=generator.conditions_for_classes(known), stop_below=stop_below,
                 codecs=codecs)
    return ClassInversion(res, known.astype(np.int64), None)
