"""Calibration: an image's loss on the model divided by its loss on a reference model.

The reference (trained on other data, with another architecture) measures how hard the
image is to reconstruct at all, so the ratio removes the image's inherent complexity.
:func:`calibrate` is the one ratio rule; :func:`calibrated_losses` inverts on both models.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

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


def calibrated_losses(
    model: Generator,
    reference: Generator | None,
    images: np.ndarray,
    config: InversionConfig,
    stop_threshold: float | None = None,
    classes: np.ndarray | None = None,
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
    """
    check_class_inputs(model, config, classes, len(images))
    ref_res = None
    if reference is not None:
        ref = reference.for_shape(tuple(images.shape[1:]))
        ref_res = invert(ref, images, config)
    stop_below = None
    if stop_threshold is not None:
        stop_below = stop_threshold * (1.0 if ref_res is None else ref_res.loss.astype(np.float64))
    res, winning, _ = invert_by_class_rule(model, images, config, classes, stop_below)
    if ref_res is None:
        return CalibratedLosses(res.loss, None, res.loss, res, None, winning)
    return CalibratedLosses(res.loss, ref_res.loss, calibrate(res.loss, ref_res.loss), res, ref_res, winning)
