"""Calibration: an image's loss on the model divided by its loss on a reference model.

The reference (trained on other data, with another architecture) measures how hard the
image is to reconstruct at all, so the ratio removes the image's inherent complexity.
:func:`calibrate` is the one ratio rule; :func:`calibrated_losses` inverts on both models.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ronan_jax.attribution import second_chance
from ronan_jax.attribution.classes import check_class_inputs, invert_by_class_rule
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import InversionResult, invert


def calibrate(loss: np.ndarray, ref_loss: np.ndarray | None) -> np.ndarray:
    """``loss / ref_loss`` (divided in the losses' own precision), as float64 with NaN where
    it is not finite (a reference loss of 0, an overflow, a diverged inversion); ``loss``
    itself when uncalibrated."""
    loss = np.asarray(loss)
    if ref_loss is None:
        ratio = loss
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = loss / np.asarray(ref_loss)
    return np.where(np.isfinite(ratio), ratio, np.nan).astype(np.float64)


class CalibratedLosses(NamedTuple):
    """What :func:`calibrated_losses` measures (arrays of length B)."""

    loss: np.ndarray
    ref_loss: np.ndarray | None
    calibrated: np.ndarray
    model_result: InversionResult
    reference_result: InversionResult | None
    winning_class: np.ndarray | None  # the class each image used; None if unconditional
    # The second chance (None when it did not apply): [B] bool, the images inverted again on
    # the model; their first-pass model losses ([B], the final loss where not re-run); the
    # second pass's own result, on the flagged images only, in their order.
    second_pass: np.ndarray | None = None
    first_loss: np.ndarray | None = None
    second_result: InversionResult | None = None


def calibrated_losses(
    model: Generator,
    reference: Generator | None,
    images: np.ndarray,
    config: InversionConfig,
    stop_threshold: float | None = None,
    classes: np.ndarray | None = None,
    second_chance_level: float | None = None,
    codecs: np.ndarray | None = None,
) -> CalibratedLosses:
    """Losses on the model and on the reference, their ratio (the model's loss alone when
    uncalibrated) and, for a conditional model, the class each image was inverted with.

    The reference generator is adapted to the images' shape (:meth:`Generator.for_shape`);
    it is unconditional and inverted once per image.

    ``stop_threshold``: a calibrated-loss decision threshold. The reference is inverted
    first, then each image's inversion on the model stops as soon as its calibrated loss is
    below the threshold. Exact for the decision (the model's best loss only falls with more
    steps); the loss reported for such an image is an upper bound of the full run's.

    ``classes``: each image's class for a conditional model under ``config.class_rule``
    "known" (see :mod:`ronan_jax.attribution.classes`).

    ``second_chance_level``: with ``config.second_chance`` on, the profile's level
    (:func:`~ronan_jax.attribution.second_chance.flag_level`): the images the rule flags are
    inverted again on the model, in one more engine call with ``config.second_pass()``
    (same class rule and classes, same ``stop_below``), and each keeps the lower of its two
    losses (its input and reconstruction from the same pass). None: first pass only (a
    profile's images before its level is known).

    ``codecs``: each image's JPEG spec for a robust mode that re-codes as JPEG, given to the
    model's and the reference's inversions alike (and to the second pass).
    """
    check_class_inputs(model, config, classes, len(images))
    ref_res = None
    if reference is not None:
        ref = reference.for_shape(tuple(images.shape[1:]))
        ref_res = invert(ref, images, config, codecs=codecs)
    stop_below = None
    if stop_threshold is not None:
        stop_below = stop_threshold * (1.0 if ref_res is None else ref_res.loss.astype(np.float64))
    res, winning, _ = invert_by_class_rule(model, images, config, classes, stop_below, codecs)
    ref_loss = None if ref_res is None else ref_res.loss
    out = CalibratedLosses(res.loss, ref_loss, calibrate(res.loss, ref_loss), res, ref_res, winning)
    if config.second_chance and second_chance_level is not None:
        out = apply_second_chance(out, model, images, config, second_chance_level, classes, stop_below,
                                  codecs)
    return out


def apply_second_chance(
    first: CalibratedLosses,
    model: Generator,
    images: np.ndarray,
    config: InversionConfig,
    level: float,
    classes: np.ndarray | None = None,
    stop_below: np.ndarray | None = None,
    codecs: np.ndarray | None = None,
) -> CalibratedLosses:
    """``first`` after the second chance: the images flagged at ``level``
    (:func:`~ronan_jax.attribution.second_chance.flagged`) inverted again on the model with
    ``config.second_pass()``, each image's loss the minimum over both passes. The merged
    ``model_result`` takes loss, input, reconstruction and divergence from the winning pass
    and keeps the first pass's per-restart fields (``second_result`` holds the second's)."""
    flags = second_chance.flagged(first.loss, first.calibrated, level)
    if not flags.any():
        return first._replace(second_pass=flags, first_loss=first.loss)
    idx = np.flatnonzero(flags)
    sub, sub_class, _ = invert_by_class_rule(
        model, np.asarray(images, np.float32)[idx], config.second_pass(),
        None if classes is None else np.asarray(classes)[idx],
        # a scalar when uncalibrated (the threshold itself), one per image otherwise
        None if stop_below is None else np.broadcast_to(stop_below, (len(images),))[idx],
        None if codecs is None else np.asarray(codecs)[idx],
    )
    res = first.model_result
    best = second_chance.min_loss(res.loss[idx], sub.loss)
    won = idx[(best < np.where(np.isfinite(res.loss[idx]), res.loss[idx], np.inf))]
    from_sub = np.searchsorted(idx, won)
    fields = {name: np.array(getattr(res, name), copy=True)
              for name in ("loss", "best_input", "reconstruction", "diverged", "resized_to")}
    for name in fields:
        fields[name][won] = np.asarray(getattr(sub, name))[from_sub]
    merged = res._replace(**fields)
    winning = first.winning_class
    if winning is not None and sub_class is not None:
        winning = np.array(winning, copy=True)
        winning[won] = sub_class[from_sub]
    return first._replace(
        loss=merged.loss, calibrated=calibrate(merged.loss, first.ref_loss), model_result=merged,
        winning_class=winning, second_pass=flags, first_loss=first.loss, second_result=sub,
    )
