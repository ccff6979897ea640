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

**Failed twice.** An image still above the level after its second pass *and* an outlier of
the profile's own spread (:func:`failed_level`) is taken as an inversion that failed twice: a
profile built with ``trim_failed`` leaves such images out of mu and sigma (:func:`still_failed`).
The level alone cannot say "failed": a photo model's sound profile is skewed (log-normal
like, its tail up to 31x its median at 1500 steps), so its tail sits above any fixed multiple
of the median and a second search does not bring it down. The spread is measured robustly in
log space (median and MAD of the first pass's log calibrated losses, which one failure does
not move), so a failure (40x-135x the median of a tight MNIST profile) is cut, and a long
but sound tail is not (``benchmarks/RESULTS.md``, session 16). Grubbs-based trimming, which
re-tests after every cut, also eats into a tight profile's sound tail; this rule does not.

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


FAILED_MADS = 4.0
"""How many robust log-space sigmas above the median a profile image must stay, after its
second pass, to be left out as failed twice (:func:`failed_level`). In the shipped fast and
express profiles the failed ``dcgan-mnist-b`` inversion stays 5.9 and 4.1 of them above its
median; of every other profile image one is beyond 4 (4.25, in ``cdcgan-mnist``'s fast
profile, so it is left out), and the rest are at most 3.7 (``dcgan-photo``'s skewed tail:
2.0)."""

MAD_TO_SIGMA = 1.4826  # a normal sample's sigma over its median absolute deviation


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


def failed_level(first_pass_calibrated: Sequence[float | None] | np.ndarray, level: float,
                 mads: float = FAILED_MADS) -> float:
    """The calibrated loss above which a profile image still counts as failed after its second
    pass: the second chance's ``level``, or ``median * exp(mads * s)`` where it is higher, with
    ``s`` the MAD of the finite first-pass log calibrated losses scaled to a normal's sigma. At
    ``mads`` 4 a sound log-normal profile of 100 loses an image with probability ~0.3 %."""
    cal = np.array([np.nan if v is None else v for v in first_pass_calibrated], np.float64)
    cal = cal[np.isfinite(cal) & (cal > 0)]
    if cal.size == 0 or not mads > 0:
        raise ValueError(f"a failed level needs positive finite losses and mads > 0, got "
                         f"{cal.size} losses, mads={mads}")
    logs = np.log(cal)
    centre = float(np.median(logs))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(logs - centre)))
    return max(float(level), float(np.exp(centre + mads * spread)))


def still_failed(loss: np.ndarray, calibrated: np.ndarray, bound: float) -> list[int]:
    """Indices of the images whose minimum-over-passes losses are still flagged at ``bound``
    (:func:`failed_level`): diverged, or above it. A profile built with ``trim_failed`` leaves
    them out of its statistics."""
    return [int(i) for i in np.flatnonzero(flagged(loss, calibrated, bound))]


def min_loss(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Elementwise minimum of two passes' losses, a non-finite loss (diverged) losing to a
    finite one, in the first pass's dtype."""
    first = np.asarray(first)
    second = np.asarray(second, first.dtype)
    a = np.where(np.isfinite(first), first, np.inf)
    b = np.where(np.isfinite(second), second, np.inf)
    out = np.minimum(a, b)
    return np.where(np.isfinite(out), out, first).astype(first.dtype)
