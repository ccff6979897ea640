"""``ronan profile``: build a model's belonging profile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ronan_jax.cli.app import (
    CLASS_RULE_HELP,
    CLASS_RULES,
    DEFAULT_MODEL_SPEC,
    MODEL_HELP,
    PRESET_HELP,
    PRESET_NAMES,
    REFERENCE_HELP,
    ROBUST_MODES,
    SECOND_CHANCE_HELP,
    SECOND_CHANCE_K,
    WARM_START_HELP,
    cli,
    handle_errors,
    stderr,
)

if TYPE_CHECKING:
    from rich.console import Console

    from ronan_jax.attribution.build import ProgressFn
    from ronan_jax.attribution.profile import Profile
    from ronan_jax.engine.config import InversionConfig
    from ronan_jax.engine.generator import Generator
    from ronan_jax.engine.memory import CallFit

ROBUST_HELP = (
    "Invert through a post-processing family, for images that were filtered after the model "
    "made them: tone (a bounded global colour map: gain, channel mixing, offset, gamma) or "
    "tone+blur (and a bounded 3x3 blur/sharpen kernel), found jointly with the input on the "
    "model and the reference alike; jpeg re-codes the output with each audited JPEG file's own "
    "quantisation tables (a file that is not a JPEG passes unchanged), tone+jpeg does both. "
    "tone+resample adds a bounded crop-zoom, a 7-tap blur/sharpen and a resize down and back "
    "(every size from 0.4x tried each step), for images that were cropped or resized; "
    "tone+resample+jpeg re-codes last. Off is the paper's method. tone and jpeg cost about as "
    "much as off per step; resample more on small models (see benchmarks/RESULTS.md). Recorded in the profile; "
    "audits use it."
)
METRIC_NAMES = ("mse", "mae", "ssim")  # = ronan_jax.engine.metrics.METRICS names (checked in tests)


@cli.command()
@click.option("--model", default=DEFAULT_MODEL_SPEC, show_default=True, help=MODEL_HELP)
@click.option("--reference", default=None, help=REFERENCE_HELP)
@click.option("--samples", default=100, show_default=True, type=click.IntRange(min=3), help="N: how many of the model's own images the profile measures.")
@click.option("--preset", default="paper", show_default=True, type=click.Choice(PRESET_NAMES), help=PRESET_HELP + " --steps, --restarts and --warm-start/--cold-start override it.")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Adam steps per inversion (default: the preset's; paper 1500).")
@click.option("--restarts", default=None, type=click.IntRange(min=1), help="Random restarts per image, the best one counts (default: the preset's; paper 8).")
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--metric", default="mse", show_default=True, type=click.Choice(METRIC_NAMES), help="Reconstruction loss.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated images and of the inversions.")
@click.option("--class", "class_pool", multiple=True, type=click.IntRange(min=0), help="Class-conditional models: draw the profile's images from this class (repeatable). Default: all classes, uniformly.")
@click.option("--class-rule", default="known", show_default=True, type=click.Choice(CLASS_RULES), help=CLASS_RULE_HELP + " Audits use the profile's rule.")
@click.option("--class-screen", "class_screen", default=0, show_default=True, type=click.IntRange(min=0), metavar="STEPS", help="With --class-rule min: a cheaper rule. Every class is inverted for STEPS steps and only the --class-keep best run all --steps (cost C x STEPS + KEEP x --steps instead of C x --steps). 0: the full minimum. Audits use the profile's rule.")
@click.option("--class-keep", default=2, show_default=True, type=click.IntRange(min=1), help="With --class-screen: how many classes run on after the screening.")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Significance level of Grubbs' test.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images inverted together per device call (default: the engine's per-device choice).")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="Where to write the profile JSON (default: profile-NAME.json).")
@click.option("--trim-outliers/--no-trim-outliers", "trim_outliers", default=None, help="Leave out of mu and sigma the profile losses that repeated Grubbs tests reject as too high (failed inversions). Default: the preset's (off: the fast preset trims by --trim-failed instead).")
@click.option("--trim-failed/--no-trim-failed", "trim_failed", default=None, help="With the second chance: leave out of mu and sigma the profile images still above its level, and far outside the profile's own log-space spread, after their second pass (inversions that failed twice); a sound tail is never cut. Default: the preset's (fast and express: on).")
@click.option("--second-chance", default=None, is_flag=False, flag_value=SECOND_CHANCE_K, type=click.FloatRange(min=0), metavar="[K]", help=SECOND_CHANCE_HELP + " Default: the preset's (fast and express: 5; paper: off). Recorded in the profile; audits apply its level.")
@click.option("--second-restarts", default=32, show_default=True, type=click.IntRange(min=1), help="Second chance: restarts of the second pass (new starting inputs), halved at 10, 25 and 50 % of its steps.")
@click.option("--second-steps", default=None, type=click.IntRange(min=0), help="Second chance: Adam steps of the second pass (0: --steps). Default: the preset's (fast: 300; express: its --steps).")
@click.option("--warm-start/--cold-start", "warm_start", default=None, help=WARM_START_HELP + " Default: the preset's. Recorded in the profile; audits use it.")
@click.option("--robust", default="off", show_default=True, type=click.Choice(ROBUST_MODES), help=ROBUST_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar (for logs).")
@handle_errors
def profile(
    model: str,
    reference: str | None,
    samples: int,
    preset: str,
    steps: int | None,
    restarts: int | None,
    lr: float,
    metric: str,
    seed: int,
    class_pool: tuple[int, ...],
    class_rule: str,
    class_screen: int,
    class_keep: int,
    alpha: float,
    batch_size: int | None,
    out: str | None,
    trim_outliers: bool | None,
    trim_failed: bool | None,
    second_chance: float | None,
    second_restarts: int,
    second_steps: int | None,
    warm_start: bool | None,
    robust: str,
    quiet: bool,
) -> None:
    """Build a model's belonging profile (run once per model; slow).

    Generates --samples images from the model, saves them as 8-bit images would be, inverts
    each on the model and on the reference, and stores the mean and spread of their
    calibrated losses. Audits must use the same model, reference and settings; they take
    their settings from the profile. The losses are also kept in OUT.progress.jsonl, so a
    stopped build resumes and a rerun with --trim-outliers or another --alpha inverts nothing
    (and a rerun with --second-chance inverts only the second pass).
    """
    from ronan_jax.attribution.build import build_profile, profile_fit
    from ronan_jax.attribution.presets import get_preset
    from ronan_jax.attribution.warm_start import check_warm_start
    from ronan_jax.audit.plan import load_model_spec, load_reference_spec
    from ronan_jax.engine.program import images_per_call
    from ronan_jax.models.resolver import default_reference_spec, normalize_spec

    err = stderr()
    ref_spec = reference if reference is not None else default_reference_spec(model)
    gen = load_model_spec(model)
    ref = load_reference_spec(ref_spec, defaulted=reference is None)
    chosen = {k: v for k, v in (("steps", steps), ("restarts", restarts),
                                  ("warm_start", warm_start)) if v is not None}
    chosen_preset = get_preset(preset)
    if trim_outliers is None:
        trim_outliers = chosen_preset.trim_outliers
    if second_chance is None:
        second_chance = chosen_preset.second_chance
    if second_steps is None:
        second_steps = chosen_preset.second_steps
    if trim_failed is None:
        trim_failed = chosen_preset.trim_failed and bool(second_chance)
    if trim_failed and not second_chance:
        raise click.UsageError("--trim-failed leaves out images still above the second "
                               "chance's level: it needs --second-chance")
    config = chosen_preset.config(lr=lr, metric=metric, seed=seed,
                                  class_rule=class_rule, class_screen_steps=class_screen,
                                  class_screen_keep=class_keep, second_chance=second_chance,
                                  second_restarts=second_restarts, second_steps=second_steps,
                                  robust=robust, **chosen)
    if batch_size is not None:
        config = config.replace(max_batch=batch_size * config.runs_per_image(gen.encoder is not None))
    if config.warm_start and gen.encoder is None and warm_start is None:
        raise click.UsageError(
            f"the {preset} preset starts from the model's encoder, and {gen.name!r} has none; "
            "train one with `ronan encoder train --model DIR`, or use --preset paper")
    check_warm_start(gen, ref, config)
    out_path = Path(out or f"profile-{gen.name}.json")
    # Every measured loss is kept beside the profile: a stopped build resumes, and a rerun
    # with other statistics (--alpha, --trim-outliers) inverts nothing.
    resume = out_path.with_suffix(".progress.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)  # fails now, not after the inversions
    if not quiet:
        ref_name = "none (uncalibrated)" if ref is None else ref.name
        err.print(
            f"Profile of {gen.name} (reference {ref_name}): {samples} images, "
            f"{describe_settings(config, gen, ref)}."
        )
    chunk, fit = profile_fit(gen, ref, config, samples)  # exit 2 if no image fits in RAM
    if not quiet and fit is not None and chunk < images_per_call(config):
        err.print(f"Memory: {describe_fit(chunk, fit)}")
    with profile_progress(err, samples, quiet) as progress:
        built = build_profile(
            gen, ref, n=samples, seed=seed, config=config, alpha=alpha, progress=progress,
            resume_path=resume, trim_outliers=trim_outliers, trim_failed=trim_failed, classes=list(class_pool) or None,
            model_spec=normalize_spec(model),
            reference_spec=None if ref_spec is None else normalize_spec(ref_spec), chunk=chunk,
        )
    built.save(out_path)
    click.echo(
        f"Wrote {out_path}: N={built.n}"
        + (f" ({len(built.trimmed)} outliers trimmed)" if trim_outliers else "")
        + (f" ({len(built.second_chance.get('failed', []))} failed inversions left out)"
           if trim_failed and built.second_chance else "")
        + (f" ({len(built.second_chance['images'])} images given a second pass above "
           f"calibrated loss {built.second_chance_level:.4g})" if built.second_chance else "")
        + f", mean calibrated loss {built.mu:.4g}, sd {built.sigma:.4g}, "
        f"Grubbs critical value {built.critical_value:.4f} (alpha {built.alpha}). "
        f"Audit with: ronan audit IMAGES --model {model} --profile {out_path}. "
        f"Measured losses kept in {resume} (a rerun of this command reuses them)."
    )
    warn_failed_inversions(built)


@contextlib.contextmanager
def profile_progress(console: Console, total: int, quiet: bool) -> Iterator[ProgressFn | None]:
    """A ``progress(done, total)`` callback drawing a bar on ``console`` (None when quiet)."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("profile", total=total)
        yield lambda done, n: bar.update(task, completed=done, total=n)


def describe_fit(chunk: int, fit: CallFit) -> str:
    """One line on a memory-lowered call size: how many images, and the figures behind it."""
    from ronan_jax.engine.memory import HOST_MEMORY, size_text

    where = "host RAM" if fit.budget.source == HOST_MEMORY else "device memory"
    text = f"{chunk} image{'s' * (chunk != 1)} per engine call"
    if fit.one is not None:
        text += f" (one image's compiled step needs {size_text(fit.one)}"
        if fit.per_image is not None and fit.per_image != fit.one:
            text += f", each more {size_text(fit.per_image)}"
        text += ")"
    return (text + f", the most that fit in {size_text(fit.budget.usable)} of {size_text(fit.budget.free)} "
            f"{where} ({fit.budget.note or fit.budget.source}).")


def describe_settings(config: InversionConfig, model: Generator | None = None,
                      reference: Generator | None = None) -> str:
    from ronan_jax.attribution.classes import describe_class_rule
    from ronan_jax.attribution.warm_start import describe_warm_start

    classes = "" if model is None else describe_class_rule(model, config)
    warm = "" if model is None else describe_warm_start(model, reference, config)
    text = (
        f"{config.steps} steps x {config.restarts} restarts, lr {config.lr:g}, "
        f"{config.metric}, seed {config.seed}" + (f", {classes}" if classes else "")
        + (f", {warm}" if warm else "")
    )
    if config.robust != "off":
        text += f", robust {config.robust}"
    if config.second_chance:
        second = config.second_pass()
        text += (f", second chance k {config.second_chance:g} ({second.steps} steps x "
                 f"{second.restarts} new restarts)")
    return text


def warn_failed_inversions(profile: Profile) -> None:
    """Say so when a profile's statistics include failed inversions (it loosens every verdict)."""
    from ronan_jax.attribution.profile import failed_inversion_warning

    warning = failed_inversion_warning(profile)
    if warning:
        click.echo(f"Warning: {warning}", err=True)
