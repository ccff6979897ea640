"""Named inversion budgets: the paper's procedure, and a fast one chosen by measurement.

A preset fixes what a profile is built with: the inversion budget (steps, restarts), whether
inversions start warm at the model's encoder, and whether the profile's failed inversions
are left out of its statistics. Audits then take every setting from the profile.

``fast`` was picked on the core rows (``benchmarks/RESULTS.md``, "Warm starts"): with a warm
start, 300 steps x 2 restarts rank images as well as the paper's 1500 x 8 (AUC 0.997 and
1.000 against 0.990 and 0.995), but at such short budgets one or two of a profile's 100
images still fail to invert, and one failure raises Grubbs' threshold enough to let a fifth
of the real digits in; leaving them out of mu and sigma (``trim_outliers``) gives the
paper's accuracy back. The paper's preset is the SPEC default and trims nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ronan_jax.engine.config import InversionConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named budget; ``config`` builds its inversion settings."""

    name: str
    steps: int
    restarts: int
    warm_start: bool
    trim_outliers: bool
    summary: str

    def config(self, **changes: Any) -> InversionConfig:
        """The preset's inversion settings, with ``changes`` applied."""
        base = {"steps": self.steps, "restarts": self.restarts, "warm_start": self.warm_start}
        return InversionConfig(**{**base, **changes})


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("paper", 1500, 8, False, False,
               "the paper's procedure: 1500 Adam steps from 8 random restarts"),
        Preset("fast", 300, 2, True, True,
               "300 steps from 2 random restarts plus a warm start at the model's encoder, "
               "failed profile inversions left out of the statistics"),
    )
}
DEFAULT_PRESET = "paper"


def get_preset(name: str) -> Preset:
    """The preset ``name`` (``ValueError`` naming the presets if unknown)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
