"""Is a profile file what ``ronan profile`` wrote? Types, ranges, internal consistency and
the digest, checked before a single image is judged with it.

A profile decides every verdict, so a hand-edited one (``mu`` raised to 100, a stored loss
changed, another model's hash pasted in) must be refused, not trusted. The digest is the
SHA-256 of the profile's canonical JSON without the digest itself: it catches edits and
damage, not a forger who recomputes it. Format-1 profiles (written before digests) get every
check but the digest. Format 3 (a profile built with the second chance) adds the
``second_chance`` record, whose level, flagged images and first-pass losses must agree with
the rule (:mod:`ronan_jax.attribution.second_chance`) and the stored losses. NumPy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from ronan_jax.attribution import second_chance

REL_TOL = 1e-9
"""Relative tolerance of the recomputed statistics (they are stored as JSON doubles)."""
CAL_REL_TOL = 1e-6
"""Relative tolerance of a stored calibrated loss against loss / ref_loss (float32 ratio)."""


class ProfileError(ValueError):
    """A profile file that is malformed, out of range, inconsistent or edited."""


def digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``data`` without its ``digest`` and the derived
    ``critical_value``."""
    body = {k: v for k, v in data.items() if k not in ("digest", "critical_value")}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ProfileError(f"profile field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ProfileError(f"profile field {key!r} must be an integer, got {value!r}")
    return int(value)


def _mapping(data: Mapping[str, Any], key: str, optional: bool = False) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, Mapping):
        raise ProfileError(f"profile field {key!r} must be an object, got {value!r}")
    return value


def _losses(data: Mapping[str, Any], key: str) -> np.ndarray:
    """A stored loss list as float64, NaN for a diverged image (``null``)."""
    value = data.get(key)
    if not isinstance(value, list):
        raise ProfileError(f"profile field {key!r} must be a list of losses, got {type(value).__name__}")
    out = np.full(len(value), np.nan)
    for i, v in enumerate(value):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v < 0:
            raise ProfileError(f"profile field {key!r}[{i}] must be a finite loss >= 0 or null, got {v!r}")
        out[i] = float(v)
    return out


def _check_shape_and_fields(data: Mapping[str, Any]) -> None:
    model = _mapping(data, "model")
    if not isinstance(model.get("param_hash"), str) or not model["param_hash"]:
        raise ProfileError("profile field 'model' must name the model's param_hash")
    reference = _mapping(data, "reference", optional=True)
    if reference is not None and not isinstance(reference.get("param_hash"), str):
        raise ProfileError("profile field 'reference' must name the reference's param_hash")
    _mapping(data, "config")
    if not isinstance(data.get("calibrated"), bool):
        raise ProfileError(f"profile field 'calibrated' must be true or false, got {data.get('calibrated')!r}")
    if data["calibrated"] != (reference is not None):
        raise ProfileError("profile says calibrated but names no reference (or the reverse)")
    shape = data.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ProfileError(f"profile field 'image_shape' must be [H, W, C], got {shape!r}")
    _integer(data, "seed")
    classes = data.get("classes")
    if classes is not None and not (
            isinstance(classes, list)
            and all(isinstance(k, Integral) and not isinstance(k, bool) and k >= 0 for k in classes)):
        raise ProfileError(f"profile field 'classes' must list class numbers, got {classes!r}")
    if classes is not None and len(classes) != len(data.get("losses") or []):
        raise ProfileError("profile field 'classes' must give one class per profile image")


def _check_statistics(data: Mapping[str, Any], stats: Any) -> None:
    """``stats(calibrated, alpha, trimmed_mask)`` -> (mu, sigma, n) recomputes the profile."""
    n = _integer(data, "n")
    mu, sigma, alpha = _number(data, "mu"), _number(data, "sigma"), _number(data, "alpha")
    if n < 3:
        raise ProfileError(f"profile N must be >= 3, got {n}")
    if not sigma > 0:
        raise ProfileError(f"profile sigma must be > 0, got {sigma}")
    if not 0 < alpha < 1:
        raise ProfileError(f"profile alpha must lie in (0, 1), got {alpha}")
    losses, cal = _losses(data, "losses"), _losses(data, "calibrated_losses")
    ref = None if data.get("ref_losses") is None else _losses(data, "ref_losses")
    if (ref is None) == bool(data["calibrated"]):
        raise ProfileError("a calibrated profile needs ref_losses, an uncalibrated one none")
    if len(losses) != len(cal) or (ref is not None and len(ref) != len(cal)):
        raise ProfileError("profile loss lists have different lengths")
    with np.errstate(divide="ignore", invalid="ignore"):
        want = losses if ref is None else losses / ref
    want = np.where(np.isfinite(want), want, np.nan)
    if not np.allclose(cal, want, rtol=CAL_REL_TOL, atol=0, equal_nan=True):
        bad = int(np.flatnonzero(~np.isclose(cal, want, rtol=CAL_REL_TOL, atol=0, equal_nan=True))[0])
        raise ProfileError(f"profile calibrated loss {bad} ({cal[bad]}) is not its loss / ref_loss ({want[bad]})")
    trimmed = data.get("trimmed", [])
    if not isinstance(trimmed, list) or not all(
            isinstance(i, Integral) and not isinstance(i, bool) and 0 <= i < len(cal) for i in trimmed):
        raise ProfileError(f"profile field 'trimmed' must list loss indices, got {trimmed!r}")
    got_mu, got_sigma, got_n = stats(cal, [int(i) for i in trimmed])
    if got_n != n:
        raise ProfileError(f"profile N is {n} but its losses give {got_n}")
    for name, stored, recomputed in (("mu", mu, got_mu), ("sigma", sigma, got_sigma)):
        if not math.isclose(stored, recomputed, rel_tol=REL_TOL, abs_tol=1e-300):
            raise ProfileError(f"profile {name} is {stored!r} but its losses give {recomputed!r}")


def _check_second_chance(data: Mapping[str, Any], fmt: int) -> None:
    """A format-3 profile's ``second_chance`` record against its settings, the rule and its
    stored losses; other formats must not have one."""
    record = data.get("second_chance")
    config = data["config"]
    if fmt < 3:
        if record is not None or "second_chance" in config:
            raise ProfileError(f"a format-{fmt} profile has no second chance; this one names one")
        return
    record = _mapping(data, "second_chance")
    k = _number(record, "k")
    level = _number(record, "level")
    if config.get("second_chance") != k:
        raise ProfileError(f"profile second_chance k {k!r} is not its settings' "
                           f"{config.get('second_chance')!r}")
    losses = _losses(data, "losses")
    first = _losses(record, "first_losses")
    if len(first) != len(losses):
        raise ProfileError("profile second_chance first_losses must give one loss per image")
    ref = None if data.get("ref_losses") is None else _losses(data, "ref_losses")
    with np.errstate(divide="ignore", invalid="ignore"):
        first_cal = first if ref is None else first / ref
    first_cal = np.where(np.isfinite(first_cal), first_cal, np.nan)
    try:
        want_level = second_chance.flag_level(first_cal, k)
    except ValueError as exc:
        raise ProfileError(f"profile second_chance: {exc}") from None
    if not math.isclose(level, want_level, rel_tol=REL_TOL, abs_tol=1e-300):
        raise ProfileError(f"profile second_chance level is {level!r} but its first-pass "
                           f"losses give {want_level!r}")
    images = record.get("images")
    want = [int(i) for i in np.flatnonzero(second_chance.flagged(first, first_cal, level))]
    if images != want:
        raise ProfileError(f"profile second_chance images {images!r} are not the ones its rule "
                           f"flags ({want!r})")
    kept = np.ones(len(losses), bool)
    kept[want] = False
    same = np.isclose(losses[kept], first[kept], rtol=0, atol=0, equal_nan=True)
    if not same.all():
        raise ProfileError("profile losses of images without a second pass differ from their "
                           "first-pass losses")
    rerun = np.asarray(want, int)
    if np.any(np.isfinite(first[rerun]) & ~(losses[rerun] <= first[rerun])):
        raise ProfileError("a second-chance profile loss is above its first-pass loss")
    if "failed" in record:  # built with trim_failed: the images that failed twice
        if "failed_level" in record:
            try:
                want_bound = second_chance.failed_level(first_cal, level,
                                                        _number(record, "failed_mads"))
            except ValueError as exc:
                raise ProfileError(f"profile second_chance: {exc}") from None
            if not math.isclose(_number(record, "failed_level"), want_bound, rel_tol=REL_TOL, abs_tol=1e-300):
                raise ProfileError(f"profile second_chance failed_level is {record['failed_level']!r} "
                                   f"but its first-pass losses give {want_bound!r}")
            bound = want_bound
        else:  # built before the spread rule: the level alone
            bound = level
        cal = _losses(data, "calibrated_losses")  # validated against the losses already
        want_failed = second_chance.still_failed(losses, cal, bound)
        if record["failed"] != want_failed:
            raise ProfileError(f"profile second_chance failed {record['failed']!r} are not the "
                               f"images that failed twice ({want_failed!r})")
        finite = [i for i in want_failed if np.isfinite(cal[i])]
        if not set(finite) <= set(data.get("trimmed", [])):
            raise ProfileError("profile second_chance failed images are not all left out "
                               "of its statistics ('trimmed')")


def check_profile_data(data: Any, stats: Any, current_format: int) -> None:
    """Raise :class:`ProfileError` unless ``data`` is an intact profile (see module doc).
    ``stats(calibrated, trimmed)`` -> (mu, sigma, n) is the profile's own statistics rule;
    formats 1 to ``current_format`` load (the digest from format 2 on)."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"a profile is a JSON object, got {type(data).__name__}")
    fmt = data.get("format")
    if isinstance(fmt, bool) or fmt not in range(1, current_format + 1):
        raise ProfileError(f"unsupported profile format {fmt!r}")
    _check_shape_and_fields(data)
    _check_statistics(data, stats)
    _check_second_chance(data, fmt)
    if fmt >= 2 and data.get("digest") != digest(data):
        raise ProfileError("profile digest does not match its contents: the file was edited "
                           "or damaged; rebuild it with `ronan profile`")
