"""Frozen settings passed down explicitly and stored with every profile and result row."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

PRECISIONS = ("float32", "bfloat16")
LOOPS = ("auto", "scan", "chunked")
CLASS_RULES = ("known", "min", "zero")
ROBUST_MODES = ("off", "tone", "tone+blur", "jpeg", "tone+jpeg", "tone+resample", "tone+resample+jpeg")  # the families of engine.robust


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    """How the input of a generator is reverse-engineered: Adam (learning rate ``lr``) on the
    input from ``restarts`` random starts for ``steps`` steps, minimising ``metric`` between
    the generator's output and the image.

    Attributes that change results (``steps``, ``restarts``, ``lr``, ``metric``, ``seed``,
    ``precision`` and the early-stopping options when on) form :meth:`result_settings`; the
    rest (``max_batch``, ``loop``, ``unroll``, ``devices``) only change speed and memory.

    Early stopping (off by default, so the default is the paper's fixed-step run), decided every
    ``check_every`` steps, per image, independently of batch neighbours:

    - ``plateau_window`` > 0: a restart stops once its best loss improved by less than
      ``plateau_rtol`` (relative) over the last ``plateau_window`` steps.
    - ``halving_at``: fractions of ``steps`` at which each image keeps the better half of its
      running restarts (successive halving).

    ``max_batch`` is the number of runs (images x restarts) per device call; 0 picks a
    backend default (:func:`ronan_jax.engine.program.default_max_batch`).

    ``devices``: how many of this process's devices share each batch (data parallelism,
    :mod:`ronan_jax.engine.mesh`); 0 means all of them. With several, a call holds up to
    ``max_batch`` runs per device.

    ``class_rule``: how a conditional model's class is chosen for an image (unconditional
    models ignore it): ``"known"`` the image's given class, ``"min"`` the minimum loss over
    all classes (RONAN's rule when the class is unknown), ``"zero"`` an all-zero class
    vector (where the model family allows one). A result setting, recorded only when it is
    not ``"known"``, so settings made before it existed compare equal.

    ``class_screen_steps`` > 0 (with ``class_rule="min"``) screens the classes: every class
    is inverted for that many steps, and only the ``class_screen_keep`` classes with the
    lowest losses then run the full ``steps``. A cheaper rule than the full minimum, whose
    cost is ``C x screen + keep x steps`` instead of ``C x steps``; recorded when on.

    Second chance (off by default: ``second_chance`` 0): ``second_chance`` = k > 0 inverts
    again, on the model, every image whose first-pass calibrated loss is above k times the
    median of its profile's first-pass calibrated losses (or whose model inversion diverged),
    with ``second_restarts`` new restarts for ``second_steps`` steps (0: ``steps``), pruned by
    successive halving at ``second_halving`` (fractions of the steps; () for none), with PRNG
    keys of another seed (:meth:`second_pass`); its loss is the minimum over both passes.
    Many restarts, halved, because a failed inversion is a search that missed: 32 restarts
    halved at 10/25/50 % cost 1.2 times an 8-restart pass and found the basin that 16
    unpruned restarts missed (``benchmarks/RESULTS.md``, "Second chance").
    The rule and why it looks at the calibrated loss: :mod:`ronan_jax.attribution.second_chance`.
    Result settings, recorded only when on, so settings made before they existed compare
    equal.

    ``warm_start``: every image of a generator that has an encoder (``Generator.encoder``)
    gets one more run, started at the encoding of the image, besides its ``restarts`` runs
    from the prior (drawn exactly as without it). The image's loss is the minimum over its
    runs, so at equal steps it is never above the cold run's; a generator without an encoder
    runs cold. A result setting, recorded when on; which encoder was used is in the
    generator's identity (``encoder_hash``).

    ``robust``: invert through a post-processing family ("off", the paper's method, by
    default; "tone", "tone+blur", "jpeg", "tone+jpeg", "tone+resample",
    "tone+resample+jpeg"): the input and a few bounded filter parameters are found jointly,
    on the model and the reference alike; "resample" also crops, filters and tries every
    downscale-and-back size, and the "jpeg" modes re-code the output with each image's own JPEG tables (the ``codecs`` of
    :func:`~ronan_jax.engine.invert.invert`; :mod:`ronan_jax.engine.robust`). A result
    setting, recorded when on.
    """

    steps: int = 1500
    restarts: int = 8
    lr: float = 0.1
    metric: str = "mse"
    seed: int = 0
    precision: str = "float32"
    max_batch: int = 0
    loop: str = "auto"
    unroll: int = 10
    check_every: int = 50
    plateau_window: int = 0
    plateau_rtol: float = 1e-3
    halving_at: tuple[float, ...] = ()
    devices: int = 0
    second_chance: float = 0.0
    second_restarts: int = 32
    second_steps: int = 0
    second_halving: tuple[float, ...] = (0.1, 0.25, 0.5)
    class_rule: str = "known"
    class_screen_steps: int = 0
    class_screen_keep: int = 2
    warm_start: bool = False
    robust: str = "off"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.max_batch < 0 or self.unroll < 1 or self.check_every < 1:
            raise ValueError("max_batch must be >= 0, unroll and check_every >= 1")
        if self.robust not in ROBUST_MODES:
            raise ValueError(f"robust must be one of {ROBUST_MODES}, got {self.robust!r}")
        if self.class_rule not in CLASS_RULES:
            raise ValueError(f"class_rule must be one of {CLASS_RULES}, got {self.class_rule!r}")
        if self.class_screen_steps:
            if self.class_rule != "min":
                raise ValueError("class_screen_steps needs class_rule 'min' (the class unknown)")
            if not 0 < self.class_screen_steps < self.steps:
                raise ValueError(
                    f"class_screen_steps must lie in (0, steps={self.steps}), got {self.class_screen_steps}"
                )
            if self.class_screen_keep < 1:
                raise ValueError(f"class_screen_keep must be >= 1, got {self.class_screen_keep}")
        elif self.class_screen_steps < 0:
            raise ValueError(f"class_screen_steps must be >= 0, got {self.class_screen_steps}")
        if not 0 <= self.second_chance < float("inf"):
            raise ValueError(f"second_chance must be a finite k >= 0 (0: off), got {self.second_chance}")
        if self.second_restarts < 1 or self.second_steps < 0:
            raise ValueError("second_restarts must be >= 1 and second_steps >= 0 (0: steps)")
        if self.devices < 0:
            raise ValueError(f"devices must be >= 0 (0: all local devices), got {self.devices}")
        if self.plateau_window < 0 or self.plateau_window % self.check_every:
            raise ValueError("plateau_window must be a non-negative multiple of check_every")
        for name in ("halving_at", "second_halving"):
            fractions = getattr(self, name)
            if any(not 0 < f < 1 for f in fractions):
                raise ValueError(f"{name} fractions must lie in (0, 1), got {fractions}")
            object.__setattr__(self, name, tuple(sorted(float(f) for f in fractions)))

    @property
    def early_stopping(self) -> bool:
        return self.plateau_window > 0 or bool(self.halving_at)

    def result_settings(self) -> dict[str, Any]:
        """The settings that determine results: what profiles and result rows compare."""
        out: dict[str, Any] = {
            "steps": self.steps,
            "restarts": self.restarts,
            "lr": self.lr,
            "metric": self.metric,
            "seed": self.seed,
            "precision": self.precision,
        }
        if self.early_stopping:
            out.update(
                check_every=self.check_every,
                plateau_window=self.plateau_window,
                plateau_rtol=self.plateau_rtol,
                halving_at=list(self.halving_at),
            )
        if self.second_chance:
            out.update(
                second_chance=self.second_chance,
                second_restarts=self.second_restarts,
                second_steps=self.second_steps or self.steps,
                second_halving=list(self.second_halving),
            )
        if self.class_rule != "known":
            out["class_rule"] = self.class_rule
        if self.class_screen_steps:
            out.update(class_screen_steps=self.class_screen_steps,
                       class_screen_keep=self.class_screen_keep)
        if self.warm_start:
            out["warm_start"] = True
        if self.robust != "off":
            out["robust"] = self.robust
        return out

    def runs_per_image(self, has_encoder: bool) -> int:
        """Runs each image gets: its ``restarts``, plus the warm start when it applies."""
        return self.restarts + int(self.warm_start and has_encoder)

    def second_pass(self) -> InversionConfig:
        """The settings of the second chance's pass: ``second_restarts`` restarts for
        ``second_steps`` steps, halved at ``second_halving``, seeded by
        :func:`second_pass_seed` (a new search, not a repeat of the first pass's starts),
        the rest as this config. It starts cold: the first pass already tried the encoding."""
        return dataclasses.replace(
            self,
            restarts=self.second_restarts,
            steps=self.second_steps or self.steps,
            halving_at=self.second_halving,
            seed=second_pass_seed(self.seed),
            second_chance=0.0,
            warm_start=False,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InversionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in ("halving_at", "second_halving"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> InversionConfig:
        return dataclasses.replace(self, **changes)


def second_pass_seed(seed: int) -> int:
    """The run seed of a second-chance pass of a run seeded ``seed``: derived from it (so a
    rerun repeats it) and never ``seed`` itself (so every image gets new starting inputs)."""
    digest = hashlib.sha256(f"ronan-second-chance:{int(seed)}".encode()).digest()
    out = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    return out if out != seed else out ^ 1
