"""One-sided Grubbs' test of calibrated losses against a belonging distribution.

H0: the image is non-belonging, i.e. an outlier ABOVE the belonging distribution (mu, sigma,
N) of a model's calibrated losses. H0 is rejected (the image is belonging) when

    z = (A' - mu) / sigma  <  G = (N - 1) / sqrt(N) * sqrt(t^2 / (N - 2 + t^2)),

with t = t_{alpha/N, N-2}, the upper critical value of Student's t. Everything is vectorised
over any number of images; callers drop diverged (non-finite) losses before calling.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from ronan_jax.attribution.verdicts import BELONGING, NON_BELONGING


def _check_n(n: int) -> int:
    """Profile size N as a Python int; Grubbs needs N >= 3 (N - 2 degrees of freedom)."""
    if isinstance(n, bool) or not isinstance(n, Integral):
        raise ValueError(f"N must be an integer, got {n!r}")
    if n < 3:
        raise ValueError(f"Grubbs' test needs N >= 3 profile images, got N = {n}")
    return int(n)


def _check_alpha(alpha: float) -> float:
    """Significance level, strictly inside (0, 1)."""
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def _check_mu_sigma(mu: ArrayLike, sigma: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Belonging-distribution mean (finite) and standard deviation (finite, > 0)."""
    mu_a = np.asarray(mu, dtype=np.float64)
    sigma_a = np.asarray(sigma, dtype=np.float64)
    if not np.all(np.isfinite(mu_a)):
        raise ValueError(f"mu must be finite, got {mu!r}")
    if not np.all(np.isfinite(sigma_a)) or not np.all(sigma_a > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
    return mu_a, sigma_a


def _check_losses(calibrated_losses: ArrayLike) -> np.ndarray:
    """Calibrated losses as float64; non-finite ones are an error naming their indices."""
    losses = np.asarray(calibrated_losses, dtype=np.float64)
    bad = ~np.isfinite(losses)
    if np.any(bad):
        idx = np.argwhere(bad)
        shown = [tuple(int(v) for v in i) if losses.ndim > 1 else int(i[0]) for i in idx[:20]]
        more = f" (first 20 of {len(idx)})" if len(idx) > 20 else ""
        raise ValueError(
            f"{len(idx)} non-finite calibrated loss(es) at indices {shown}{more}; "
            "filter diverged images out before the Grubbs test"
        )
    return losses


def critical_value(n: int, alpha: float = 0.05) -> float:
    """One-sided Grubbs critical value G for a profile of N values at level alpha."""
    n = _check_n(n)
    alpha = _check_alpha(alpha)
    t = stats.t.isf(alpha / n, n - 2)
    return float((n - 1) / np.sqrt(n) * np.sqrt(t * t / (n - 2 + t * t)))


def high_outliers(values: ArrayLike, alpha: float = 0.05, min_keep: int = 3) -> np.ndarray:
    """Mask of the values repeated one-sided Grubbs tests reject as too high.

    The classical use of the test: while the largest value lies more than G(n, alpha) sample
    standard deviations above the mean of the values still kept, it is an outlier and is
    dropped. For a belonging profile these are inversions that failed to find the image's
    input (a loss far above the rest), not a property of the model.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("high_outliers takes a 1-D array of finite values")
    alpha = _check_alpha(alpha)
    out = np.zeros(x.shape, bool)
    while x.size - out.sum() > max(min_keep, 3):
        kept = np.flatnonzero(~out)
        sd = float(np.std(x[kept], ddof=1))
        top = kept[np.argmax(x[kept])]
        if not sd > 0 or (x[top] - x[kept].mean()) / sd <= critical_value(kept.size, alpha):
            break
        out[top] = True
    return out


def z_scores(calibrated_losses: ArrayLike, mu: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """Standardised calibrated losses (A' - mu) / sigma, float64, same shape as the losses."""
    losses = _check_losses(calibrated_losses)
    mu_a, sigma_a = _check_mu_sigma(mu, sigma)
    return np.asarray((losses - mu_a) / sigma_a)


def p_values(z: ArrayLike, n: int) -> np.ndarray:
    """One-sided Grubbs p-value that each z is an outlier above a belonging profile of size N.

    p = min(1, N * P(T_{N-2} > t)) with t^2 = N (N-2) z^2 / ((N-1)^2 - N z^2): the smallest
    alpha at which z would exceed the critical value, so p < alpha exactly when
    z > critical_value(N, alpha). z <= 0 gives 1; z >= (N-1)/sqrt(N), the largest z a member
    of N values can reach, gives 0. NaN stays NaN.
    """
    n = _check_n(n)
    z_a = np.asarray(z, dtype=np.float64)
    z_max = (n - 1) / np.sqrt(n)
    inside = (z_a > 0) & (z_a < z_max)
    zi = np.where(inside, z_a, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = n * (n - 2) * zi * zi / ((n - 1) ** 2 - n * zi * zi)
    p_inside = np.minimum(1.0, n * stats.t.sf(np.sqrt(t2), n - 2))
    p = np.where(z_a <= 0, 1.0, np.where(z_a >= z_max, 0.0, p_inside))
    return np.asarray(np.where(np.isnan(z_a), np.nan, p))


@dataclass(frozen=True, eq=False)
class GrubbsResult:
    """Per-image outcome of :func:`grubbs_test`; every field has the losses' shape."""

    z: np.ndarray
    critical_value: np.ndarray
    p_value: np.ndarray
    belonging: np.ndarray


def grubbs_test(
    calibrated_losses: ArrayLike,
    mu: ArrayLike,
    sigma: ArrayLike,
    n: int,
    alpha: float = 0.05,
) -> GrubbsResult:
    """Test many calibrated losses against one belonging distribution (mu, sigma, N).

    An image is belonging when its z-score is below the critical value (H0 "non-belonging"
    rejected). The returned arrays are read-only.
    """
    n = _check_n(n)
    alpha = _check_alpha(alpha)
    z = z_scores(calibrated_losses, mu, sigma)
    g = np.full(z.shape, critical_value(n, alpha))
    p = p_values(z, n)
    belonging = np.asarray(z < g)
    for arr in (z, g, p, belonging):
        arr.flags.writeable = False
    return GrubbsResult(z=z, critical_value=g, p_value=p, belonging=belonging)


def verdict_labels(belonging: ArrayLike) -> np.ndarray:
    """Map a boolean verdict array to 'belonging' / 'non-belonging' strings."""
    b = np.asarray(belonging)
    if b.dtype != np.bool_:
        raise ValueError(f"belonging must be a boolean array, got dtype {b.dtype}")
    return np.where(b, BELONGING, NON_BELONGING)
