"""Belonging profile: the distribution of calibrated losses of a model's own generated images,
built once per model (:mod:`ronan_jax.attribution.build`) and stored as human-readable JSON.

A profile is bound to the exact model weights, reference weights and inversion settings it
was built with; :func:`check_compatible` refuses to judge with any other combination. Its
statistics (:func:`belonging_stats`) and checks (:func:`failed_inversion_note`) need no
model, and this module never imports JAX, so the report can read profiles without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ronan_jax.attribution import grubbs
from ronan_jax.attribution.profile_integrity import ProfileError, check_profile_data, digest
from ronan_jax.engine.config import InversionConfig

if TYPE_CHECKING:
    from ronan_jax.engine.generator import Generator

PROFILE_FORMAT = 2
"""Format 2 adds the ``digest`` and stores a diverged image's losses as ``null``
(format 1 profiles still load, without the digest check)."""
SECOND_CHANCE_FORMAT = 3
"""The format of a profile built with the second chance (its ``second_chance`` record); one
built without it is written in :data:`PROFILE_FORMAT`, byte for byte as before, so
profiles of either kind load, and code older than the second chance refuses format 3."""


class ProfileMismatchError(ValueError):
    """A profile was built for another model, reference or settings than the audit uses."""


def quantize_8bit(images: np.ndarray) -> np.ndarray:
    """Round [0, 1] images to the 256 levels of an 8-bit PNG, as images in the wild are."""
    return (np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Profile:
    """Belonging statistics of one model, with everything needed to reproduce them."""

    model: dict[str, str]
    reference: dict[str, str] | None
    config: dict[str, Any]  # InversionConfig.result_settings()
    calibrated: bool
    n: int
    mu: float
    sigma: float
    alpha: float
    seed: int
    losses: list[float | None]  # None: the image's inversion diverged
    ref_losses: list[float | None] | None
    calibrated_losses: list[float | None]
    image_shape: list[int]
    versions: dict[str, str]
    created: str
    format: int = PROFILE_FORMAT
    # Indices (into ``calibrated_losses``) left out of mu and sigma: by ``trim_outliers``,
    # or as failed inversions (``trim_failed``: still above the second chance's level).
    trimmed: list[int] = dataclasses.field(default_factory=list)
    digest: str = ""  # set by save(): SHA-256 of everything else (profile_integrity.digest)
    # A class-conditional model's profile: the class each image was generated from.
    classes: list[int] | None = None
    # Built with the second chance (format 3): {"k", "level" (k x the median of the
    # first-pass calibrated losses: the constant every audit applies), "images" (indices
    # inverted again), "first_losses" (every image's first-pass loss on the model)}.
    second_chance: dict[str, Any] | None = None

    @property
    def critical_value(self) -> float:
        return grubbs.critical_value(self.n, self.alpha)

    @property
    def threshold(self) -> float:
        """Calibrated loss below which an image is judged belonging: mu + G * sigma."""
        return self.mu + self.critical_value * self.sigma

    @property
    def second_chance_level(self) -> float | None:
        """The calibrated loss above which an image gets a second pass (None: built
        without the second chance)."""
        return None if self.second_chance is None else float(self.second_chance["level"])

    def to_dict(self) -> dict[str, Any]:
        data = {**dataclasses.asdict(self), "critical_value": self.critical_value}
        if data["second_chance"] is None:  # absent, as in profiles made before it existed
            del data["second_chance"]
        return data

    def sealed(self) -> Profile:
        """This profile in the current format with its digest, refused
        (:class:`ProfileError`) if its own loader would refuse it."""
        fmt = PROFILE_FORMAT if self.second_chance is None else SECOND_CHANCE_FORMAT
        data = {**self.to_dict(), "format": fmt, "digest": ""}
        del data["critical_value"]
        data["digest"] = digest(data)
        check_profile_data(data, _recomputed_stats, fmt)
        return dataclasses.replace(self, format=fmt, digest=data["digest"])

    def save(self, path: str | Path) -> Path:
        """Write the sealed profile atomically (a failed write leaves the old file)."""
        path = Path(path)
        text = json.dumps(self.sealed().to_dict(), indent=2, allow_nan=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(text)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        """The profile ``data`` holds; :class:`ProfileError` unless it is intact."""
        check_profile_data(data, _recomputed_stats, SECOND_CHANCE_FORMAT)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ProfileError(f"cannot read profile {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ProfileError as exc:
            raise ProfileError(f"profile {path}: {exc}") from None

    @property
    def id(self) -> str:
        """Short identity of everything that decides verdicts: weights, settings, statistics."""
        blob = json.dumps(
            [self.model, self.reference, self.config, self.calibrated, self.n, self.seed,
             self.mu, self.sigma, self.alpha],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a loss (a diverged image is stored as null)")


def _recomputed_stats(calibrated: np.ndarray, trimmed: list[int]) -> tuple[float, float, int]:
    """mu, sigma and N of stored calibrated losses, leaving out ``trimmed`` (the rule of
    :func:`belonging_stats`); raises ProfileError where no statistics exist."""
    keep = np.isfinite(calibrated)
    keep[trimmed] = False
    if keep.sum() < 3:
        raise ProfileError(f"only {int(keep.sum())} profile losses are finite and kept")
    valid = calibrated[keep]
    return float(np.mean(valid)), float(np.std(valid, ddof=1)), int(keep.sum())


def finite_or_none(values: Sequence[float] | np.ndarray) -> list[float | None]:
    """Losses as stored in a profile: floats, None where not finite (diverged)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


def config_from_profile(profile: Profile, **speed_settings: Any) -> InversionConfig:
    """The inversion settings a profile was built with (plus speed-only settings)."""
    return InversionConfig.from_dict({**profile.config, **speed_settings})


def check_compatible(
    profile: Profile,
    model: Generator,
    reference: Generator | None,
    config: InversionConfig,
) -> None:
    """Raise :class:`ProfileMismatchError` naming every way the audit differs from the profile."""
    problems = []
    if profile.model.get("param_hash") != model.param_hash:
        problems.append(
            f"model weights differ (profile {profile.model.get('name')}:{str(profile.model.get('param_hash'))[:12]}, "
            f"audit {model.name}:{model.param_hash[:12]})"
        )
    if profile.calibrated:
        if reference is None:
            problems.append("the profile is calibrated but no reference model was given")
        elif profile.reference is None or profile.reference.get("param_hash") != reference.param_hash:
            ref = profile.reference or {}
            problems.append(
                f"reference weights differ (profile {ref.get('name')}:{str(ref.get('param_hash'))[:12]}, "
                f"audit {reference.name}:{reference.param_hash[:12]})"
            )
    elif reference is not None:
        problems.append("the profile is uncalibrated but a reference model was given")
    if config.warm_start and profile.config.get("warm_start"):
        problems += _encoder_problems(profile, model, reference)
    want = config.result_settings()
    for key in sorted(set(want) | set(profile.config)):
        if want.get(key) != profile.config.get(key):
            problems.append(f"{key}: profile {profile.config.get(key)!r}, audit {want.get(key)!r}")
    if problems:
        raise ProfileMismatchError("profile does not match this audit: " + "; ".join(problems))


def _encoder_problems(profile: Profile, model: Generator, reference: Generator | None) -> list[str]:
    """Warm starts depend on the encoders: a profile built warm applies only with the same
    ones (or the same absence of one)."""
    def show(h: str | None) -> str:
        return "none" if h is None else h[:12]

    out = []
    for role, recorded, gen in (("model", profile.model, model), ("reference", profile.reference, reference)):
        if gen is None or recorded is None:
            continue
        have, had = gen.identity.get("encoder_hash"), recorded.get("encoder_hash")
        if have != had:
            out.append(f"{role} encoder differs (profile {show(had)}, audit {show(have)}; "
                       "warm starts begin at the encoder's output)")
    return out


def belonging_stats(
    calibrated: np.ndarray, alpha: float = 0.05, trim_outliers: bool = False,
    failed: Sequence[int] = (),
) -> tuple[float, float, int, list[int]]:
    """mu, sigma (ddof 1), N and the trimmed indices of a profile's calibrated losses.

    Non-finite losses (diverged inversions) never count. Nor do the losses at ``failed``
    (inversions known to have failed: the second chance's images still above its level after
    their second pass), nor, with ``trim_outliers``, those
    :func:`ronan_jax.attribution.grubbs.high_outliers` then rejects.
    """
    cal = np.asarray(calibrated, np.float64)
    ok = np.isfinite(cal)
    drop_failed = [int(i) for i in failed if ok[int(i)]]
    ok[drop_failed] = False
    if ok.sum() < 3:
        raise ValueError(f"only {ok.sum()} of {cal.size} profile images inverted to a finite loss"
                         + (f" and were kept ({len(drop_failed)} failed)" if drop_failed else ""))
    trimmed = drop_failed
    if trim_outliers:
        idx = np.flatnonzero(ok)
        drop = idx[grubbs.high_outliers(cal[idx], alpha)]
        ok[drop] = False
        trimmed = sorted(trimmed + [int(i) for i in drop])
    valid = cal[ok]
    sigma = float(np.std(valid, ddof=1))
    if not sigma > 0:
        raise ValueError("profile losses have zero spread; cannot run Grubbs' test")
    return float(np.mean(valid)), sigma, int(ok.sum()), trimmed


def failed_inversion_warning(profile: Profile) -> str | None:
    """A warning when the profile's mu and sigma include losses of failed inversions."""
    return failed_inversion_note(profile.calibrated_losses or [], profile.trimmed,
                                 profile.alpha, profile.threshold)



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


# A profile is "far from normal" when Shapiro-Wilk gives W below this and p below
# NORMALITY_P. The benchmark's sound MNIST profiles give W 0.76-0.94, the photo profiles
# 0.52-0.63, those with a failed inversion 0.18-0.20 (benchmarks/RESULTS.md, "Normality").
NORMALITY_W = 0.9
NORMALITY_P = 1e-3


def normality(calibrated: Sequence[float | None] | np.ndarray) -> tuple[float, float] | None:
    """Shapiro-Wilk (W, p) of a profile's finite calibrated losses (None under 3 of them or
    without spread). Grubbs' test assumes the profile is a normal sample."""
    from scipy import stats

    cal = np.array([np.nan if v is None else v for v in calibrated], np.float64)
    cal = cal[np.isfinite(cal)]
    if cal.size < 3 or not np.ptp(cal) > 0:
        return None
    w, p = stats.shapiro(cal)
    return float(w), float(p)


def normality_note(calibrated: Sequence[float | None] | np.ndarray) -> str | None:
    """A note when a profile's calibrated losses are far from normal (:func:`normality`,
    W < :data:`NORMALITY_W` and p < :data:`NORMALITY_P`), else None."""
    got = normality(calibrated)
    if got is None or not (got[0] < NORMALITY_W and got[1] < NORMALITY_P):
        return None
    return (f"the profile's calibrated losses are far from normal (Shapiro-Wilk W = "
            f"{got[0]:.3f}, p = {got[1]:.2g}), while Grubbs' test assumes a normal profile: "
            "its alpha is nominal, not the measured rate of belonging images judged "
            "non-belonging. Calibrated losses are right-skewed; a profile with a failed "
            "inversion is far more so (see the second chance, `ronan profile --second-chance`)")


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
