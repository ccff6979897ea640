"""Building a belonging profile: generate the model's own images, invert them on the model
and the reference, and keep the statistics of their calibrated losses.

A conditional model's profile images each get a class drawn by :func:`profile_classes`
(from the seed, so a caller recomputes them; the profile itself does not list them).

Every finished chunk's losses are appended to a resume file, so a long build survives being
stopped, and a rerun with other statistics (alpha, trimming) inverts nothing.

With ``config.second_chance`` on, the first pass over all images fixes the level
(:func:`~ronan_jax.attribution.second_chance.flag_level`), then the flagged images are
inverted again on the model (:meth:`~ronan_jax.engine.config.InversionConfig.second_pass`),
in chunks recorded in the same resume file; the first pass's records are those of a build
without the second chance, so turning it on reuses them.

Calls are sized like an audit's (:func:`profile_fit`): the engine's size, lowered to what
the free memory holds (the device's, or the host's RAM on CPU), and a build that cannot
invert even one image in host memory stops before it starts
(:class:`~ronan_jax.engine.memory.InsufficientMemoryError`) instead of being killed.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ronan_jax.attribution import second_chance
from ronan_jax.attribution.calibrate import calibrate, calibrated_losses
from ronan_jax.attribution.classes import invert_by_class_rule, num_classes
from ronan_jax.attribution.profile import Profile, belonging_stats, finite_or_none, quantize_8bit
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.environment import library_versions
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.memory import (
    HOST_MEMORY,
    CallFit,
    InsufficientMemoryError,
    MemoryBudget,
    fit_call,
    memory_budget,
    padded_images,
)
from ronan_jax.engine.program import images_per_call

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: images whose losses are measured so far, of all."""


def build_profile(
    model: Generator,
    reference: Generator | None,
    n: int = 100,
    seed: int = 0,
    config: InversionConfig | None = None,
    alpha: float = 0.05,
    progress: ProgressFn | None = None,
    resume_path: str | Path | None = None,
    trim_outliers: bool = False,
    trim_failed: bool = False,
    failed_mads: float = second_chance.FAILED_MADS,
    model_spec: str | None = None,
    reference_spec: str | None = None,
    classes: list[int] | np.ndarray | None = None,
    memory: Callable[[], MemoryBudget | None] = memory_budget,
    chunk: int | None = None,
) -> Profile:
    """Generate ``n`` images from random inputs of ``model``, quantise them to 8 bits, and
    measure their calibrated losses. ``reference=None`` builds an
    uncalibrated profile. ``progress(done, total)`` is called after each chunk of images.

    ``resume_path``: a JSON-lines file where each finished chunk's losses are appended; a
    rerun with the same model, reference, settings and seed skips the chunks already there,
    so a long profile build survives being stopped.

    ``trim_outliers`` (off by default, as in the paper): leave out of mu and sigma the losses
    that repeated Grubbs tests find too high (:func:`belonging_stats`), i.e. inversions that
    failed; one such loss can multiply sigma and with it the threshold.

    ``trim_failed`` (needs ``config.second_chance``): leave out of mu and sigma the images
    still above the second chance's level and far outside the profile's own log-space spread
    after their second pass, whose inversion failed twice
    (:func:`~ronan_jax.attribution.second_chance.failed_level`); unlike ``trim_outliers`` it
    cuts neither a tight profile's tail nor a skewed one's. ``failed_mads``: that spread's
    width in robust log-space sigmas, recorded.

    ``model_spec`` / ``reference_spec``: how the models were named (``builtin:NAME`` or a
    checkpoint path), recorded in the profile so an audit finds the same reference.

    A conditional model (:func:`~ronan_jax.attribution.classes.num_classes` > 0): each
    image's class is drawn uniformly from ``classes`` (default: all) by
    :func:`profile_classes`, the image generated with it, and inverted under
    ``config.class_rule`` ("known": its drawn class; "min": the minimum over classes). The
    drawn classes are stored in the profile (``Profile.classes``, one per image).

    ``memory``: the memory calls are sized in (:func:`profile_fit`); the default is the
    device's, or the host's on CPU. Raises
    :class:`~ronan_jax.engine.memory.InsufficientMemoryError` before any work when not even
    one image fits in host memory. ``chunk``: images per call when the caller sized them
    already (:func:`profile_fit`'s).
    """
    if n < 3:
        raise ValueError(f"a profile needs n >= 3 images, got {n}")
    config = config or InversionConfig()
    if trim_failed and not config.second_chance:
        raise ValueError("trim_failed leaves out images still above the second chance's level: "
                         "it needs the second chance (config.second_chance > 0)")
    drawn = profile_classes(model, n, seed, classes)
    chunk = chunk or profile_fit(model, reference, config, n, memory)[0]
    # Generated in the inversions' chunks only where memory lowered them (the same images,
    # drawn from one key; a forward pass needs less memory than an inversion step).
    images = quantize_8bit(profile_images(model, n, seed, drawn,
                                          chunk if chunk < images_per_call(config) else None))
    ident = _resume_identity(model, reference, config, seed, n, classes if drawn is not None else None)
    done = _read_resume(resume_path, ident)
    if resume_path is not None:  # an unwritable place fails now, not after the inversions
        Path(resume_path).parent.mkdir(parents=True, exist_ok=True)
        Path(resume_path).touch()
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        if not all(i in done for i in range(lo, hi)):
            cls = None if drawn is None else drawn[lo:hi]
            measured = calibrated_losses(model, reference, images[lo:hi], config, classes=cls)
            loss_c, ref_c = measured.loss, measured.ref_loss
            for j, i in enumerate(range(lo, hi)):
                done[i] = (float(loss_c[j]), None if ref_c is None else float(ref_c[j]))
            _append_resume(resume_path, ident, {i: done[i] for i in range(lo, hi)})
        if progress is not None:
            progress(hi, n)
    loss = np.array([done[i][0] for i in range(n)])
    ref_loss = None if reference is None else np.array([done[i][1] for i in range(n)])
    cal = calibrate(loss, ref_loss)
    record = None
    if config.second_chance:
        level = second_chance.flag_level(cal, config.second_chance)
        flags = second_chance.flagged(loss, cal, level)
        record = {"k": config.second_chance, "level": level,
                  "images": [int(i) for i in np.flatnonzero(flags)],
                  "first_losses": finite_or_none(loss)}
        first_cal = cal
        second = _second_pass(model, images, drawn, config, ident, level, record["images"],
                              resume_path, progress, n, memory)
        for i, v in second.items():
            loss[i] = second_chance.min_loss(loss[i : i + 1], np.array([v]))[0]
        cal = calibrate(loss, ref_loss)
        if trim_failed:
            record["failed_mads"] = float(failed_mads)
            record["failed_level"] = second_chance.failed_level(first_cal, level, failed_mads)
            record["failed"] = second_chance.still_failed(loss, cal, record["failed_level"])
    failed = record["failed"] if record is not None and trim_failed else []
    mu, sigma, n_used, trimmed = belonging_stats(cal, alpha, trim_outliers, failed)
    profile = Profile(
        model=_with_spec(model.identity, model_spec),
        reference=None if reference is None else _with_spec(reference.identity, reference_spec),
        config=config.result_settings(),
        calibrated=reference is not None,
        n=n_used,
        mu=mu,
        sigma=sigma,
        alpha=alpha,
        seed=seed,
        losses=finite_or_none(loss),
        ref_losses=None if ref_loss is None else finite_or_none(ref_loss),
        calibrated_losses=finite_or_none(cal),
        image_shape=list(model.output_shape),
        versions=library_versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        trimmed=trimmed,
        classes=None if drawn is None else [int(k) for k in drawn],
        second_chance=record,
    )
    return profile.sealed()  # what its loader accepts, with its digest


def _second_pass(
    model: Generator, images: np.ndarray, drawn: np.ndarray | None, config: InversionConfig,
    ident: dict[str, Any], level: float, flagged: list[int], resume_path: str | Path | None,
    progress: ProgressFn | None, n: int, memory: Callable[[], MemoryBudget | None],
) -> dict[int, float]:
    """Second-pass model losses of the ``flagged`` profile images, chunk by chunk, resumed
    from and appended to the resume file under their own identity."""
    cfg = config.second_pass()
    ident2 = {**ident, "second_pass": cfg.result_settings(), "level": level}
    done = {i: v[0] for i, v in _read_resume(resume_path, ident2).items()}
    chunk = profile_fit(model, None, cfg, len(flagged), memory)[0] if flagged else 1
    total = n + len(flagged)
    for lo in range(0, len(flagged), chunk):
        idx = flagged[lo : lo + chunk]
        if not all(i in done for i in idx):
            cls = None if drawn is None else drawn[idx]
            res = invert_by_class_rule(model, images[idx], cfg, cls).result
            got = {i: float(res.loss[j]) for j, i in enumerate(idx)}
            done.update(got)
            _append_resume(resume_path, ident2, {i: (v, None) for i, v in got.items()})
        if progress is not None:
            progress(n + lo + len(idx), total)
    return {i: done[i] for i in flagged}


def _resume_identity(model: Generator, reference: Generator | None, config: InversionConfig,
                     seed: int, n: int, classes: list[int] | np.ndarray | None) -> dict[str, Any]:
    """What a resume file's records must match: models, first-pass settings, seed, n."""
    ident = {
        "model": model.identity,
        "reference": None if reference is None else reference.identity,
        # the first pass's settings: a build with the second chance reuses its records
        "config": config.replace(second_chance=0.0).result_settings(),
        "seed": seed,
        "n": n,
    }
    if classes is not None:
        ident["classes"] = sorted({int(k) for k in classes})
    return ident


def record_measured_losses(
    resume_path: str | Path, model: Generator, reference: Generator | None, n: int, seed: int,
    config: InversionConfig, loss: np.ndarray, ref_loss: np.ndarray | None,
) -> None:
    """Enter first-pass losses of a profile's images that were measured elsewhere on the same
    images (e.g. by the accuracy benchmark's cache) into the resume file of
    :func:`build_profile` with these arguments (classes drawn from all of a conditional
    model's), so the build inverts only what is missing. The caller vouches that the losses
    are of :func:`profile_images` of ``seed`` with :func:`profile_classes`."""
    if len(loss) != n or (ref_loss is not None and len(ref_loss) != n):
        raise ValueError(f"expected {n} losses per model")
    ident = _resume_identity(model, reference, config, seed, n, None)
    _append_resume(resume_path, ident, {
        i: (float(loss[i]), None if ref_loss is None else float(ref_loss[i])) for i in range(n)})


def profile_fit(
    model: Generator, reference: Generator | None, config: InversionConfig, n: int,
    memory: Callable[[], MemoryBudget | None] = memory_budget,
) -> tuple[int, CallFit | None]:
    """Images per engine call when inverting ``n`` images on ``model`` and ``reference``,
    and the estimate it came from (None when no memory is known or the estimate failed):
    the engine's size (:func:`~ronan_jax.engine.program.images_per_call`), lowered to what
    ``memory()`` holds (:func:`~ronan_jax.engine.memory.fit_call`, as audits size theirs).

    Raises :class:`~ronan_jax.engine.memory.InsufficientMemoryError` when one image alone
    does not fit in host memory: XLA:CPU does not fail such a call, the kernel kills the
    process."""
    capacity = images_per_call(config)
    budget = memory()
    if budget is None:
        return capacity, None
    gens = [model] if reference is None else [model, reference.for_shape(tuple(model.output_shape))]
    try:
        fit = fit_call(gens, config, padded_images(min(n, capacity), capacity), budget)
    except Exception:  # an estimate must never stop a build
        return capacity, None
    if fit.images == 0 and budget.source == HOST_MEMORY:
        raise InsufficientMemoryError(
            f"cannot build a profile of {model.name} here: {fit.refusal(config.restarts)}")
    return (capacity if fit.images >= fit.limit else max(1, fit.images)), fit


def profile_classes(
    model: Generator, n: int, seed: int, classes: list[int] | np.ndarray | None = None
) -> np.ndarray | None:
    """The class of each of a profile's ``n`` images (``[n]`` int32), as :func:`build_profile`
    draws them: uniformly from ``classes`` (default: every class of the model), with a key
    derived from ``seed`` apart from the one that draws the images' inputs. None for an
    unconditional model. Deterministic, so an audit or a report can recompute them."""
    c = num_classes(model)
    if c == 0:
        if classes is not None:
            raise ValueError(f"model {model.name!r} is not conditional, but classes were given")
        return None
    pool = np.arange(c) if classes is None else np.array(sorted({int(k) for k in classes}), np.int64)
    if pool.size == 0 or pool.min() < 0 or pool.max() >= c:
        raise ValueError(
            f"model {model.name!r} is conditional with {c} classes: classes to draw from must be "
            f"a non-empty subset of [0, {c}), got {list(pool)}"
        )
    key = jax.random.fold_in(jax.random.key(seed), _CLASS_KEY)
    picks = np.asarray(jax.random.randint(key, (n,), 0, pool.size))
    return pool[picks].astype(np.int32)


def profile_images(
    model: Generator, n: int, seed: int, drawn: np.ndarray | None, chunk: int | None = None
) -> np.ndarray:
    """The ``n`` images a profile of ``seed`` is measured on, before 8-bit rounding: inputs
    from the key ``seed``, generated with the drawn classes of a conditional model;
    ``chunk`` images per call when given (the same inputs, less memory)."""
    if drawn is None and chunk is None:
        return np.asarray(model.generate(jax.random.key(seed), n), np.float32)
    z = model.sample_inputs(jax.random.key(seed), n)
    step = chunk or n
    parts = []
    for lo in range(0, n, step):
        zs = z[lo : lo + step]
        cond = (model.batched_condition(len(zs)) if drawn is None
                else model.conditions_for_classes(drawn[lo : lo + step]))
        parts.append(np.asarray(model.apply_fn(model.params, zs, cond), np.float32))
    return np.concatenate(parts)


_CLASS_KEY = 0x636C7373  # "clss": the profile classes' stream, apart from the inputs' key


def _with_spec(identity: dict[str, str], spec: str | None) -> dict[str, str]:
    return dict(identity) if spec is None else {**identity, "spec": spec}


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
