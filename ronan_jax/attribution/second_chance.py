"""The second chance: which images get a second inversion, by one rule for a profile's own
images and for audited ones. NumPy only (profiles and reports read it without JAX).

An inversion fails when none of its R restarts finds the basin of the image's input: its loss
on the model is then far too high. One such loss in a profile inflates sigma and with it
Grubbs' threshold (mean + G sigma); an audited belonging image with one is a false negative.
The second chance inverts such images again on the model with new restarts
(:meth:`ronan_jax.engine.config.InversionConfig.second_pass`) and keeps the minimum over both
passes, so a profile stays a fair sample of what a belonging image's loss looks like under the
procedure, provided audited images are treated exactly alike.

**The rule.** An image is *flagged* when its first-pass calibrated loss is above
``level = k * median(the profile's first-pass calibrated losses)`` (or its model inversion
diverged). ``k`` is the setting ``second_chance``; the level is fixed when the profile is
built, before any audited image is seen, and stored in the profile, so the profile's images and
every audit use the same constant.

**Why the calibrated loss, and only the model is inverted again.** A failed inversion on the
model makes the ratio too *high*: that is what the rule looks for, on the quantity Grubbs'
test judges. The model's raw loss would flag images for being complex (a photo model's
belonging images span two decades of raw loss, which calibration removes), not for having
failed. A failed *reference* inversion makes the ratio too *low* (Table 5's MAE row): a high
ratio never comes from it, so re-inverting the reference of a flagged image could only raise
its ratio further, and a low ratio cannot be told from a genuinely well-fitted belonging image
without inverting everything again. So the second pass is on the model only, and reference
failures stay out of scope (measured: ``benchmarks/RESULTS.md``, "Second chance").

**Failed twice.** An image still above the level after its second pass is taken as an
inversion that failed twice: a profile built with ``trim_failed`` leaves such images out of
mu and sigma (:func:`still_failed`). This trims only what the rule flagged and a new search
could not bring down, never a sound tail (which sits below the level), unlike Grubbs-based
trimming, which cuts genuine tail values of a tight profile.

**The median**, not the mean or the threshold: a failed inversion moves the mean and sigma
(that is the problem) but not the median, so the level is the same whether or not the profile
already holds a failure. Non-belonging images sit above the level too, and get their second
pass; only a new search tells a failed belonging inversion from a non-belonging image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_K = 5.0
"""The k of ``ronan profile --second-chance`` without a value. In the accuracy benchmark's
first passes the failed profile inversions were 40x and 48x their profile's median and the
core row's two false negatives 7x and 156x, while the largest loss of a sound MNIST profile
was 2.6x to 5.7x (the skewed photo profiles reach 23x: their tail gets a second pass too)."""


def flag_level(first_pass_calibrated: Sequence[float | None] | np.ndarray, k: float) -> float:
    """``k`` times the median of a profile's finite first-pass calibrated losses: the level
    above which an image gets a second pass. ValueError without finite losses or k <= 0."""
    cal = np.array([np.nan if v is None else v for v in first_pass_calibrated], np.float64)
    cal = cal[np.isfinite(cal)]
    if not k > 0 or cal.size == 0:
        raise ValueError(f"a second-chance level needs k > 0 and finite losses, got k={k}, "
                         f"{cal.size} finite losses")
    return float(k * np.median(cal))


def flagged(loss: np.ndarray, calibrated: np.ndarray, level: float) -> np.ndarray:
    """``[B]`` bool: which images get a second pass on the model, from their first-pass model
    loss and calibrated loss: a diverged model inversion, or a calibrated loss above
    ``level``. An image whose reference diverged (its model loss finite) is not flagged: a
    second pass on the model cannot give it a ratio."""
    loss = np.asarray(loss, np.float64)
    cal = np.asarray(calibrated, np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(loss) | (np.isfinite(cal) & (cal > level))


def still_failed(loss: np.ndarray, calibrated: np.ndarray, level: float) -> list[int]:
    """Indices of the images still flagged at ``level`` after both passes (their
    minimum-over-passes losses): inversions that failed twice. A profile built with
    ``trim_failed`` leaves them out of its statistics; a sound tail has nothing above the
    level, so nothing of it is cut."""
    return [int(i) for i in np.flatnonzero(flagged(loss, calibrated, level))]


def min_loss(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Elementwise minimum of two passes' losses, a non-finite loss (diverged) losing to a
    finite one, in the first pass's dtype."""
    first = np.asarray(first)
    second = np.asarray(second, first.dtype)
    a = np.where(np.isfinite(first), first, np.inf)
    b = np.where(np.isfinite(second), second, np.inf)
    out = np.minimum(a, b)
    return np.where(np.isfinite(out), out, first).astype(first.dtype)
