"""Belonging profile (SPEC section 3): the distribution of calibrated losses of a model's own
generated images, built once per model and stored as human-readable JSON.

A profile is bound to the exact model weights, reference weights and inversion settings it
was built with; :func:`check_compatible` refuses to judge with any other combination.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ronan_jax.attribution import grubbs
from ronan_jax.attribution.profile_checks import failed_inversion_note
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import default_max_batch, invert

PROFILE_FORMAT = 1


class ProfileMismatchError(ValueError):
    """A profile was built for another model, reference or settings than the audit uses."""


def quantize_8bit(images: np.ndarray) -> np.ndarray:
    """Round [0, 1] images to the 256 levels of an 8-bit PNG, as images in the wild are."""
    return (np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine numerical results."""
    out = {"python": platform.python_version(), "jax_backend": jax.default_backend()}
    for pkg in ("ronan-jax", "jax", "jaxlib", "flax", "optax", "numpy", "scipy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


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
    losses: list[float]
    ref_losses: list[float] | None
    calibrated_losses: list[float]
    image_shape: list[int]
    versions: dict[str, str]
    created: str
    format: int = PROFILE_FORMAT
    # Indices (into ``calibrated_losses``) left out of mu and sigma by ``trim_outliers``.
    trimmed: list[int] = dataclasses.field(default_factory=list)

    @property
    def critical_value(self) -> float:
        return grubbs.critical_value(self.n, self.alpha)

    @property
    def threshold(self) -> float:
        """Calibrated loss below which an image is judged belonging: mu + G * sigma."""
        return self.mu + self.critical_value * self.sigma

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "critical_value": self.critical_value}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"unsupported profile format {data.get('format')!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read profile {path}: {exc}") from exc
        return cls.from_dict(data)

    @property
    def id(self) -> str:
        """Short identity of everything that decides verdicts: weights, settings, statistics."""
        import hashlib

        blob = json.dumps(
            [self.model, self.reference, self.config, self.calibrated, self.n, self.seed,
             self.mu, self.sigma, self.alpha],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    want = config.result_settings()
    for key in sorted(set(want) | set(profile.config)):
        if want.get(key) != profile.config.get(key):
            problems.append(f"{key}: profile {profile.config.get(key)!r}, audit {want.get(key)!r}")
    if problems:
        raise ProfileMismatchError("profile does not match this audit: " + "; ".join(problems))


def calibrated_losses(
    model: Generator,
    reference: Generator | None,
    images: np.ndarray,
    config: InversionConfig,
    stop_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, Any, Any]:
    """SPEC Eq. 2: losses on M, on Mr, and their ratio (M's loss alone when uncalibrated).

    Returns (loss, ref_loss, calibrated, model_result, reference_result); the reference
    generator is adapted to the images' shape (:meth:`Generator.for_shape`).

    ``stop_threshold``: a calibrated-loss decision threshold. The reference is inverted
    first, then each image's inversion on M stops as soon as its calibrated loss is below
    the threshold. Exact for the decision (M's best loss only falls with more steps); the
    loss reported for such an image is an upper bound of the full run's.
    """
    ref_res = None
    if reference is not None:
        ref = reference.for_shape(tuple(images.shape[1:]))
        ref_res = invert(ref, images, config)
    stop_below = None
    if stop_threshold is not None:
        stop_below = stop_threshold * (1.0 if ref_res is None else ref_res.loss.astype(np.float64))
    res = invert(model, images, config, stop_below=stop_below)
    if ref_res is None:
        return res.loss, None, res.loss, res, None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = res.loss / ref_res.loss
    ratio = np.where(np.isfinite(ratio), ratio, np.nan).astype(np.float64)
    return res.loss, ref_res.loss, ratio, res, ref_res


def build_profile(
    model: Generator,
    reference: Generator | None,
    n: int = 100,
    seed: int = 0,
    config: InversionConfig | None = None,
    alpha: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
    resume_path: str | Path | None = None,
    trim_outliers: bool = False,
) -> Profile:
    """Generate ``n`` images from random inputs of ``model``, quantise them to 8 bits, and
    measure their calibrated losses (SPEC section 3). ``reference=None`` builds an
    uncalibrated profile. ``progress(done, total)`` is called after each chunk of images.

    ``resume_path``: a JSON-lines file where each finished chunk's losses are appended; a
    rerun with the same model, reference, settings and seed skips the chunks already there,
    so a long profile build survives being stopped.

    ``trim_outliers`` (off by default, as in the SPEC): leave out of mu and sigma the losses
    that repeated Grubbs tests find too high (:func:`belonging_stats`), i.e. inversions that
    failed; one such loss can multiply sigma and with it the threshold.
    """
    if n < 3:
        raise ValueError(f"a profile needs n >= 3 images, got {n}")
    config = config or InversionConfig()
    images = quantize_8bit(np.asarray(model.generate(jax.random.key(seed), n)))
    chunk = max(1, (config.max_batch or default_max_batch()) // config.restarts)
    ident = {
        "model": model.identity,
        "reference": None if reference is None else reference.identity,
        "config": config.result_settings(),
        "seed": seed,
        "n": n,
    }
    done = _read_resume(resume_path, ident)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        if not all(i in done for i in range(lo, hi)):
            loss_c, ref_c, _, _, _ = calibrated_losses(model, reference, images[lo:hi], config)
            for j, i in enumerate(range(lo, hi)):
                done[i] = (float(loss_c[j]), None if ref_c is None else float(ref_c[j]))
            _append_resume(resume_path, ident, {i: done[i] for i in range(lo, hi)})
        if progress is not None:
            progress(hi, n)
    loss = np.array([done[i][0] for i in range(n)])
    ref_loss = None if reference is None else np.array([done[i][1] for i in range(n)])
    with np.errstate(divide="ignore", invalid="ignore"):
        cal = loss if ref_loss is None else loss / ref_loss
    cal = np.where(np.isfinite(cal), cal, np.nan)
    mu, sigma, n_used, trimmed = belonging_stats(cal, alpha, trim_outliers)
    return Profile(
        model=model.identity,
        reference=None if reference is None else reference.identity,
        config=config.result_settings(),
        calibrated=reference is not None,
        n=n_used,
        mu=mu,
        sigma=sigma,
        alpha=alpha,
        seed=seed,
        losses=[float(x) for x in loss],
        ref_losses=None if ref_loss is None else [float(x) for x in ref_loss],
        calibrated_losses=[float(x) for x in cal],
        image_shape=list(model.output_shape),
        versions=library_versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        trimmed=trimmed,
    )


def belonging_stats(
    calibrated: np.ndarray, alpha: float = 0.05, trim_outliers: bool = False
) -> tuple[float, float, int, list[int]]:
    """mu, sigma (ddof 1), N and the trimmed indices of a profile's calibrated losses.

    Non-finite losses (diverged inversions) never count; with ``trim_outliers`` the losses
    :func:`ronan_jax.attribution.grubbs.high_outliers` rejects do not count either.
    """
    cal = np.asarray(calibrated, np.float64)
    ok = np.isfinite(cal)
    if ok.sum() < 3:
        raise ValueError(f"only {ok.sum()} of {cal.size} profile images inverted to a finite loss")
    trimmed: list[int] = []
    if trim_outliers:
        idx = np.flatnonzero(ok)
        drop = idx[grubbs.high_outliers(cal[idx], alpha)]
        ok[drop] = False
        trimmed = [int(i) for i in drop]
    valid = cal[ok]
    sigma = float(np.std(valid, ddof=1))
    if not sigma > 0:
        raise ValueError("profile losses have zero spread; cannot run Grubbs' test")
    return float(np.mean(valid)), sigma, int(ok.sum()), trimmed


def failed_inversion_warning(profile: Profile) -> str | None:
    """A warning when the profile's mu and sigma include losses of failed inversions."""
    return failed_inversion_note(profile.calibrated_losses or [], profile.trimmed,
                                 profile.alpha, profile.threshold)


def _read_resume(path: str | Path | None, ident: dict[str, Any]) -> dict[int, tuple[float, float | None]]:
    """Losses already measured by an interrupted build with the same identity."""
    if path is None or not Path(path).is_file():
        return {}
    done: dict[int, tuple[float, float | None]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if rec.get("ident") == ident:
            for k, v in rec["losses"].items():
                done[int(k)] = (v[0], v[1])
    return done


def _append_resume(path: str | Path | None, ident: dict[str, Any], losses: dict[int, tuple[float, float | None]]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as fh:
        if torn:  # a line cut short by a kill: end it, so the new record stands alone
            fh.write("\n")
        fh.write(json.dumps({"ident": ident, "losses": {str(k): list(v) for k, v in losses.items()}}) + "\n")
        fh.flush()
