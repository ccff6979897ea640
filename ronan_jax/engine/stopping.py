"""Early stopping: which runs of a chunk keep going, decided on the host every few steps.

Three rules, each looking at one image's runs only (so an image's result never depends on
its batch neighbours):

- ``stop_below``: an image stops once its best loss is below its threshold. Exact for
  threshold decisions: the best loss only falls with more steps, so "below" is never undone.
- plateau: a run stops once its best loss improved by less than ``plateau_rtol`` (relative)
  over the last ``plateau_window`` steps.
- successive halving: at the given steps each image keeps the better half of its running
  restarts.

:class:`StoppingRules` holds the settings (frozen) and the plateau history (the only state);
the driver makes one per chunk and asks it at every check.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ronan_jax.engine.config import InversionConfig


def halving_steps(config: InversionConfig) -> frozenset[int]:
    """The steps at which successive halving happens: each fraction of ``config.steps`` in
    ``halving_at``, rounded to a check step (the first check at the earliest)."""
    return frozenset(_round_to(f * config.steps, config.check_every) for f in config.halving_at)


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, round(x / multiple) * multiple)


@dataclasses.dataclass(frozen=True, eq=False)
class StoppingRules:
    """The early-stopping rules of one chunk of images with ``restarts`` runs each.

    Runs are image-major (run ``i`` belongs to image ``i // restarts``). ``stop_below`` holds
    one threshold per image of the chunk, or is None. Settings never change; ``history``
    records the best losses at each checked step for the plateau rule, so one instance
    serves one chunk from its first check to its last.
    """

    restarts: int
    steps: int
    check_every: int
    plateau_window: int = 0
    plateau_rtol: float = 1e-3
    halving: frozenset[int] = frozenset()
    stop_below: np.ndarray | None = None
    history: dict[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def for_chunk(cls, config: InversionConfig, stop_below: np.ndarray | None = None,
                  runs: int | None = None) -> StoppingRules:
        """Fresh rules (empty history) for a chunk inverted with ``config``, ``runs`` runs per
        image (default: the restarts)."""
        return cls(
            restarts=runs or config.restarts,
            steps=config.steps,
            check_every=config.check_every,
            plateau_window=config.plateau_window,
            plateau_rtol=config.plateau_rtol,
            halving=halving_steps(config),
            stop_below=stop_below,
        )

    @property
    def enabled(self) -> bool:
        """Whether any rule can stop a run (else the driver never checks)."""
        return self.stop_below is not None or self.plateau_window > 0 or bool(self.halving)

    def checks_at(self, step: int) -> bool:
        """Whether decisions are made after ``step`` steps: at every ``check_every`` boundary
        before the last step, when a rule is on."""
        return self.enabled and step % self.check_every == 0 and step < self.steps

    def decide(self, active: np.ndarray, best: np.ndarray, step: int) -> np.ndarray:
        """Which runs keep going after ``step`` steps.

        Args:
            active: ``[N]`` bool, the runs still going (a stopped run never restarts).
            best: ``[N]`` float, each run's best loss so far.
            step: steps run so far; call at each check step in increasing order.

        Returns a new ``[N]`` mask, a subset of ``active``.
        """
        r = self.restarts
        active = active.copy()
        per_img = best.reshape(-1, r)
        if self.stop_below is not None:
            decided = per_img.min(axis=1) < self.stop_below
            active &= ~np.repeat(decided, r)
        if self.plateau_window:
            self.history[step] = best.copy()
            past = self.history.get(step - self.plateau_window)
            if past is not None:
                with np.errstate(invalid="ignore"):
                    stalled = ~(best < past * (1.0 - self.plateau_rtol))
                active &= ~stalled
        if step in self.halving:
            act = active.reshape(-1, r)
            masked = np.where(act, per_img, np.inf)
            order = np.argsort(masked, axis=1, kind="stable")
            keep_n = np.ceil(act.sum(axis=1) / 2).astype(int)
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(r)[None].repeat(len(order), 0), axis=1)
            active &= (ranks < keep_n[:, None]).reshape(-1)
        return active
