"""Frozen settings passed down explicitly and stored with every profile and result row."""

from __future__ import annotations

import dataclasses
from typing import Any

PRECISIONS = ("float32", "bfloat16")
LOOPS = ("auto", "scan", "chunked")


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    """How the input of a generator is reverse-engineered (SPEC section 1).

    Attributes that change results (``steps``, ``restarts``, ``lr``, ``metric``, ``seed``,
    ``precision``) form :meth:`result_settings`; the rest (``max_batch``, ``loop``,
    ``unroll``) only change speed and memory.
    """

    steps: int = 1500
    restarts: int = 8
    lr: float = 0.1
    metric: str = "mse"
    seed: int = 0
    precision: str = "float32"
    max_batch: int = 256
    loop: str = "auto"
    unroll: int = 10

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
        if self.max_batch < 1 or self.unroll < 1:
            raise ValueError("max_batch and unroll must be >= 1")

    def result_settings(self) -> dict[str, Any]:
        """The settings that determine results: what profiles and result rows compare."""
        return {
            "steps": self.steps,
            "restarts": self.restarts,
            "lr": self.lr,
            "metric": self.metric,
            "seed": self.seed,
            "precision": self.precision,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InversionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> InversionConfig:
        return dataclasses.replace(self, **changes)
