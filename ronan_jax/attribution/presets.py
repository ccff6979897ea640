"""Named inversion budgets: the paper's procedure, and two measured faster ones.

A preset fixes what a profile is built with: the inversion budget (steps, restarts), whether
inversions start warm at the model's encoder, whether images get the second chance, and
whether the profile's failed inversions are left out of its statistics. Audits then take every
setting from the profile.

Both were measured on the core rows and Tables 2 and 3 (``benchmarks/RESULTS.md``, "Warm
starts"). Each gives every image whose first pass is above the profile's level the second
chance (k = 5: 32 new cold restarts of 300 steps, halved at 10/25/50 %), and leaves out of mu
and sigma the profile images that failed it too (``trim_failed``: still above the level and
far outside the profile's own log-space spread), which, unlike Grubbs-based trimming
(``trim_outliers``), cuts neither a tight profile's tail nor a skewed one's.

- ``fast``: 1500 steps from the encoding of the image and one random restart. Within 0.5
  points of the paper preset's accuracy or above it on all 13 rows, its AUC equal or higher,
  at 32-33 % of the paper's optimisation steps.
- ``express``: 300 steps from the encoding and two random restarts, at 14-15 % of the steps.
  Its AUC is the paper's or higher on all 13 rows, but 300 steps leave some belonging
  inversions unconverged: 1.0 point under on ``dcgan-mnist`` vs its training data and 1.5
  under on the three ``vae-mnist`` rows.

The paper's preset is the SPEC default and trims nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ronan_jax.attribution.second_chance import DEFAULT_K
from ronan_jax.engine.config import InversionConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named budget; ``config`` builds its inversion settings."""

    name: str
    steps: int
    restarts: int
    warm_start: bool
    trim_outliers: bool
    second_chance: float = 0.0
    second_steps: int = 0  # the second pass's steps (0: the preset's)
    # leave out of mu and sigma the profile images that failed the second chance too
    trim_failed: bool = False

    def config(self, **changes: Any) -> InversionConfig:
        """The preset's inversion settings, with ``changes`` applied."""
        base = {"steps": self.steps, "restarts": self.restarts, "warm_start": self.warm_start,
                "second_chance": self.second_chance, "second_steps": self.second_steps}
        return InversionConfig(**{**base, **changes})


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # the paper's procedure: 1500 Adam steps from 8 random restarts, cold, untrimmed
        Preset("paper", 1500, 8, warm_start=False, trim_outliers=False),
        # the paper's 1500 steps from the encoding of the image and one random restart; the
        # second chance (k = 5, 300-step restarts) for every image, the profile's images that
        # failed it too left out
        Preset("fast", 1500, 1, warm_start=True, trim_outliers=False,
               second_chance=DEFAULT_K, second_steps=300, trim_failed=True),
        # 300 steps from 2 random restarts plus the warm start, with the same second chance
        Preset("express", 300, 2, warm_start=True, trim_outliers=False,
               second_chance=DEFAULT_K, trim_failed=True),
    )
}


def get_preset(name: str) -> Preset:
    """The preset ``name`` (``ValueError`` naming the presets if unknown)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
