"""Checks of a belonging profile's losses that need no model (NumPy only, so the report can
use them without JAX)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ronan_jax.attribution import grubbs

# A profile loss this many times every lower one marks an inversion that failed. In the
# accuracy benchmark's 11 profiles the largest loss was 1.0-1.8x the next one where the tail
# was genuine, and 10-12x in the two profiles with a failed inversion (benchmarks/RESULTS.md,
# "Trimmed profiles").
FAILED_INVERSION_GAP = 5.0


def failed_inversions(calibrated: Sequence[float] | np.ndarray,
                      gap: float = FAILED_INVERSION_GAP) -> list[int]:
    """Indices of profile losses standing more than ``gap`` times above all lower ones.

    Looks only at the top tenth of the finite losses (at least the largest): a failed
    inversion is a rare, isolated value, not a heavy tail.
    """
    cal = np.asarray(calibrated, np.float64)
    idx = np.flatnonzero(np.isfinite(cal))
    if idx.size < 4:
        return []
    order = idx[np.argsort(-cal[idx], kind="stable")]
    vals = cal[order]
    cut = 0
    for k in range(max(1, idx.size // 10)):
        if vals[k] > gap * vals[k + 1]:
            cut = k + 1
    return sorted(int(i) for i in order[:cut])


def failed_inversion_note(calibrated: Sequence[float], trimmed: Sequence[int], alpha: float,
                          threshold: float) -> str | None:
    """A warning when a profile's mu and sigma include losses of failed inversions.

    Takes the profile's fields (as in its JSON): its calibrated losses, the indices already
    trimmed, alpha and its threshold (mu + G * sigma).
    """
    cal = np.array([np.nan if v is None else v for v in calibrated], np.float64)  # JSON null
    left_out = {int(i) for i in trimmed}
    bad = [i for i in failed_inversions(cal) if i not in left_out]
    if not bad:
        return None
    keep = np.isfinite(cal)
    keep[bad + sorted(left_out)] = False
    rest = cal[keep]
    without = float(np.mean(rest)) + grubbs.critical_value(rest.size, alpha) * float(
        np.std(rest, ddof=1))
    if threshold <= 1.01 * without:
        return None  # the profile's mu and sigma evidently leave them out already
    shown = ", ".join(f"{cal[i]:.3g}" for i in bad)
    one = len(bad) == 1
    return (f"{len(bad)} of this profile's {cal.size} calibrated losses ({shown}) "
            f"{'stands' if one else 'stand'} more than {FAILED_INVERSION_GAP:g}x above every "
            f"other (next: {np.max(rest):.3g}, median {np.median(rest):.3g}): "
            f"{'that inversion' if one else 'those inversions'} probably failed. "
            f"{'It raises' if one else 'They raise'} the belonging threshold from "
            f"{without:.3g} to {threshold:.3g}, so images of other origins can pass "
            "as belonging. Rerun `ronan profile` with --trim-outliers to leave "
            f"{'it' if one else 'them'} out (with the same output it reuses its "
            "measured losses).")
