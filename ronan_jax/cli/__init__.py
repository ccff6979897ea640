"""The ``ronan`` command line: thin wrappers that parse flags, call library functions, print.

Exit codes: 0 when a command completed (images that could not be judged are counted in the
summary, not failures); 2 for usage and configuration errors (bad flags, a model path that is
not a checkpoint, settings that differ from the profile's); 130 after Ctrl-C. Also runs as
``python -m ronan_jax.cli``.

Heavy modules (JAX, the zoo, the report) are imported inside the commands, so ``--help`` is
fast and checkpoint paths work even where the zoo is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

    from ronan_jax.attribution.profile import Profile
    from ronan_jax.audit import AuditConfig, AuditProgress, AuditSummary
    from ronan_jax.audit.shards import ProcessShard
    from ronan_jax.engine.config import InversionConfig
    from ronan_jax.engine.generator import Generator

DEFAULT_MODEL_SPEC = "builtin:dcgan-mnist"
DEFAULT_DB = "ronan-results.sqlite"  # = ronan_jax.audit.DEFAULT_DB (not imported: keeps --help fast)
METRIC_NAMES = ("mse", "mae", "ssim")  # = ronan_jax.engine.metrics.METRICS names (checked in tests)
DEMO_MODEL = "dcgan-mnist"
DEMO_OTHER_MODEL = "vae-mnist"
DEMO_PROFILE_NAME = "dcgan-mnist-demo"  # zoo/profiles/<this>.json: the demo's reduced settings
DEMO_SEED = 2023
DEMO_N = 10
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])

MODEL_HELP = (
    "Model to inspect: builtin:NAME (see `ronan zoo`) or the path of a checkpoint directory."
)
REFERENCE_HELP = (
    "Reference model that calibrates losses (builtin:NAME or checkpoint path), or `none` for "
    "uncalibrated losses. Default: the model's documented default reference."
)


# -- plumbing ---------------------------------------------------------------------------------


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _stdout() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _config_error_types() -> tuple[type[BaseException], ...]:
    """Library errors that mean "the user asked for something impossible" (exit 2)."""
    from ronan_jax.attribution.profile import ProfileMismatchError
    from ronan_jax.models.checkpoint import CheckpointError
    from ronan_jax.models.resolver import ModelSpecError
    from ronan_jax.results.store import StoreError

    return (ModelSpecError, CheckpointError, ProfileMismatchError, StoreError)


def _handle_errors(fn: F) -> F:
    """Map Ctrl-C to exit 130 and configuration errors to click usage errors (exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("Aborted (Ctrl-C).", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except click.ClickException:
            raise
        except Exception as exc:
            if isinstance(exc, _config_error_types()):
                raise click.UsageError(str(exc)) from exc
            raise

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _graceful_interrupt(stop: threading.Event, console: Console) -> Iterator[None]:
    """First Ctrl-C sets ``stop`` (the audit ends after the batch in flight is committed);
    a second one raises KeyboardInterrupt at once."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print(
            "[yellow]Ctrl-C: stopping after the current batch is saved "
            "(press Ctrl-C again to abandon it).[/]"
        )

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _load_model(spec: str, param: str) -> Generator:
    from ronan_jax.models.resolver import ModelSpecError, load_model

    try:
        return load_model(spec)
    except ModelSpecError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from exc


def _load_reference(spec: str | None, defaulted: bool = False) -> Generator | None:
    from ronan_jax.models.resolver import ModelSpecError, load_reference

    try:
        return load_reference(spec)
    except ModelSpecError as exc:
        hint = (
            f" ({spec} is the default reference; name another with --reference, or `none`)"
            if defaulted
            else ""
        )
        raise click.BadParameter(f"{exc}{hint}", param_hint="--reference") from exc


def _load_profile(path: str | os.PathLike[str], param: str = "--profile") -> Profile:
    from ronan_jax.attribution.profile import Profile

    try:
        return Profile.load(path)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint=param) from exc


def _profile_path_for(model_spec: str, given: str | None) -> Path:
    """``--profile``, or the profile shipped with a builtin model."""
    from ronan_jax.models.resolver import builtin_name, is_builtin, shipped_profile

    if given:
        return Path(given)
    found = shipped_profile(model_spec)
    if found is not None:
        return found
    if is_builtin(model_spec):
        name = builtin_name(model_spec)
        raise click.UsageError(
            f"no profile is shipped for {model_spec}; build one with "
            f"`ronan profile --model {model_spec} -o {name}.json` and pass --profile {name}.json"
        )
    raise click.UsageError(
        "a checkpoint model needs --profile: build one with "
        f"`ronan profile --model {model_spec} -o profile.json`"
    )


def _reference_spec_for(model_spec: str, given: str | None, profile: Profile) -> str | None:
    """``--reference``; else none for an uncalibrated profile; else the reference the profile
    was built with (when it recorded its spec); else the model's default reference."""
    from ronan_jax.models.resolver import default_reference_spec

    if given is not None:
        return given
    if not profile.calibrated:
        return None
    spec = (profile.reference or {}).get("spec")
    if spec:
        return str(spec)
    return default_reference_spec(model_spec)


def _settings_from_profile(
    profile: Profile, model: Generator, reference: Generator | None, **flags: Any
) -> InversionConfig:
    """The profile's inversion settings; flags given must equal them (else exit 2)."""
    from ronan_jax.attribution.attribute import config_from_profile
    from ronan_jax.attribution.profile import ProfileMismatchError, check_compatible

    given = {k: v for k, v in flags.items() if v is not None}
    try:
        config = config_from_profile(profile).replace(**given)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        check_compatible(profile, model, reference, config)
    except ProfileMismatchError as exc:
        raise click.UsageError(
            f"{exc}. Omit --steps/--restarts/--lr/--metric/--seed to use the profile's "
            "settings, or build a profile with yours (`ronan profile`)."
        ) from exc
    if tuple(profile.image_shape) != tuple(model.output_shape):
        raise click.UsageError(
            f"the profile was built on {tuple(profile.image_shape)} images but the model "
            f"emits {tuple(model.output_shape)}"
        )
    return config


def _describe_settings(config: InversionConfig) -> str:
    return (
        f"{config.steps} steps x {config.restarts} restarts, lr {config.lr:g}, "
        f"{config.metric}, seed {config.seed}"
    )


class _ProgressBar:
    """An :class:`AuditProgress` callback drawing a rich progress bar on stderr: images
    done (of the total when known), images/s, ETA and the running belonging count."""

    def __init__(self, console: Console, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} img/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[green]{task.fields[belonging]} belonging[/]"),
            TextColumn("[red]{task.fields[errors]} errors[/]"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task(label, total=None, rate=0.0, belonging=0, errors=0)

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, p: AuditProgress) -> None:
        self._progress.update(
            self._task,
            completed=p.done,
            total=p.total,
            rate=p.images_per_s,
            belonging=p.belonging,
            errors=p.errors,
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_paragraph(summary: AuditSummary, model: str, settings: str) -> str:
    """The one-paragraph account printed at the end of an audit."""
    kinds = ", ".join(f"{n} {k}" for k, n in summary.error_kinds.items())
    errors = _plural(summary.errors, "error") + (f" ({kinds})" if kinds else "")
    head = "Stopped early (Ctrl-C) after" if summary.stopped else "Audited"
    parts = [
        f"{head} {_plural(summary.processed, 'image')} against {model} "
        f"({settings}) in {summary.wall_s:.1f} s ({summary.images_per_s:.2f} judged images/s): "
        f"{summary.belonging} belonging, {summary.non_belonging} non-belonging, {errors}."
    ]
    if summary.skipped:
        parts.append(f"{_plural(summary.skipped, 'input')} already done were skipped (resume).")
    if summary.steps_budget:
        parts.append(summary.work.describe())
    t = summary.totals
    parts.append(
        f"Results are in {summary.db_path} (run {summary.run_id[:12]}); all rows of these "
        f"settings: {t.get('belonging', 0)} belonging, {t.get('non-belonging', 0)} "
        f"non-belonging, {t.get('error', 0)} errors."
    )
    if summary.evidence_dir:
        parts.append(f"Evidence: {summary.evidence_dir}.")
    if summary.stopped:
        parts.append("Run the same command again to resume.")
    else:
        parts.append(
            f"Next: `ronan report {summary.db_path}` for an HTML report, "
            f"`ronan export {summary.db_path}` for CSV."
        )
    return " ".join(parts)


def _run_audit_command(
    inputs: Sequence[str],
    cfg: AuditConfig,
    flags: dict[str, Any],
    *,
    info: dict[str, Any] | None = None,
    label: str = "auditing",
    shard: ProcessShard | None = None,
) -> tuple[AuditSummary, InversionConfig, Profile]:
    """Resolve models and profile from ``cfg``, run the audit (of ``shard``'s inputs only,
    when given) with a progress bar and Ctrl-C handling, and print the summary. Shared by
    ``audit`` and ``demo``."""
    from ronan_jax.audit import run_audit
    from ronan_jax.models.resolver import normalize_spec
    from ronan_jax.results.store import ResultStore

    err = _stderr()
    model = _load_model(cfg.model, "--model")
    profile_path = _profile_path_for(cfg.model, cfg.profile)
    profile = _load_profile(profile_path)
    _warn_failed_inversions(profile)
    ref_spec = _reference_spec_for(cfg.model, cfg.reference, profile)
    reference = _load_reference(ref_spec, defaulted=cfg.reference is None)
    config = _settings_from_profile(profile, model, reference, **flags)
    settings = _describe_settings(config)
    if not cfg.quiet:
        ref_name = "none (uncalibrated)" if reference is None else reference.name
        err.print(
            f"Model {model.name}, reference {ref_name}, profile {profile_path} "
            f"(N={profile.n}, id {profile.id}); {settings}."
        )
        err.print(_placement_note(config, shard, cfg.db))
    run_info = {
        "audit": cfg.to_dict(),
        "model_spec": normalize_spec(cfg.model),
        "reference_spec": None if ref_spec is None else normalize_spec(ref_spec),
        "profile_path": str(Path(profile_path).absolute()),
        "profile": profile.to_dict(),
        "inputs": list(inputs),
        **(info or {}),
    }
    stop = threading.Event()
    with ResultStore(cfg.db) as store, _graceful_interrupt(stop, err):
        bar = contextlib.nullcontext() if cfg.quiet else _ProgressBar(err, label)
        with bar:
            summary = run_audit(
                list(inputs),
                model,
                reference,
                profile,
                config,
                store,
                batch_size=cfg.batch_size,
                resize=cfg.resize,
                evidence_dir=cfg.resolved_evidence_dir(),
                progress=None if cfg.quiet else bar,  # type: ignore[arg-type]
                stop=stop,
                workers=cfg.workers,
                info=run_info,
                shard=shard,
            )
    click.echo(summary_paragraph(summary, model.name, settings))
    return summary, config, profile


def _placement_note(config: InversionConfig, shard: ProcessShard | None, db: str) -> str:
    """One line: the devices each batch is split over and, for a split run, this process's
    share and database."""
    import jax

    from ronan_jax.engine.mesh import device_count

    n = device_count(config.devices)
    line = f"Devices: {n} of this process's {jax.local_device_count()} ({jax.default_backend()})."
    if shard is not None and shard.count > 1:
        line += (
            f" Process {shard.index} of {shard.count}: judges the inputs whose path hashes to "
            f"{shard.index}, results in {db} (combine the shards with `ronan merge`)."
        )
    return line


# -- the command group --------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ronan-jax", prog_name="ronan")
def cli() -> None:
    """RONAN origin attribution: was this image generated by this model?

    For a generative model M and an image x, ronan searches M's input space for the input
    that reproduces x best (Adam inversion), divides that reconstruction loss by a reference
    model's loss (calibration), and compares the result with M's own generated images (the
    belonging profile) using Grubbs' test. Verdicts: belonging (M made it) or non-belonging.

    \b
    Typical workflow:
      ronan demo                                      # a few-minute tour on built-in models
      ronan zoo                                       # built-in models
      ronan profile --model MODEL -o profile.json     # once per model (slow)
      ronan audit IMAGES... --model MODEL --profile profile.json
      ronan report ronan-results.sqlite --labels truth.csv
      ronan export ronan-results.sqlite --format csv -o results.csv

    Models are builtin:NAME (from `ronan zoo`) or the path of a checkpoint directory.
    """


# -- zoo ------------------------------------------------------------------------------------


def _zoo_module() -> Any:
    try:
        from ronan_jax import zoo
    except Exception as exc:
        raise click.UsageError(f"the built-in model zoo is not available: {exc}") from exc
    return zoo


@cli.group(invoke_without_command=True)
@click.pass_context
def zoo(ctx: click.Context) -> None:
    """List the built-in models (`ronan zoo`), or show one (`ronan zoo show NAME`).

    Use a built-in model anywhere a model is asked for as builtin:NAME.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(zoo_list)


@zoo.command("list")
@_handle_errors
def zoo_list() -> None:
    """List the built-in models."""
    from rich.table import Table

    from ronan_jax.models.resolver import shipped_profile

    models = _zoo_module().list_models()
    table = Table(title="Built-in models (use as builtin:NAME)")
    table.add_column("name", no_wrap=True)
    for col in ("output", "trained on", "weights", "profile", "reference", "description"):
        table.add_column(col, overflow="fold")
    for m in models:
        shape = "x".join(str(s) for s in m.get("output_shape", []))
        has_profile = shipped_profile(f"builtin:{m['name']}") is not None
        table.add_row(
            m["name"],
            shape,
            str(m.get("data", "")),
            "yes" if m.get("installed") else "missing",
            "yes" if has_profile else "-",
            str(m.get("default_reference", "")),
            str(m.get("description", "")),
        )
    _stdout().print(table)


@zoo.command("show")
@click.argument("name")
@_handle_errors
def zoo_show(name: str) -> None:
    """Show one built-in model: its entry, model card and shipped profile."""
    from ronan_jax.models.resolver import shipped_profile_location

    zoo_mod = _zoo_module()
    name = name.removeprefix("builtin:")
    entries = {m["name"]: m for m in zoo_mod.list_models()}
    if name not in entries:
        raise click.BadParameter(
            f"unknown zoo model {name!r}; known: {', '.join(entries)}", param_hint="NAME"
        )
    out: dict[str, Any] = {"model": entries[name]}
    try:
        out["card"] = zoo_mod.card(name)
    except Exception as exc:
        out["card"] = f"unavailable: {exc}"
    profile_path = shipped_profile_location(name)
    if profile_path.is_file():
        data = json.loads(profile_path.read_text())
        out["profile"] = {
            "path": str(profile_path),
            **{k: data.get(k) for k in ("n", "mu", "sigma", "alpha", "critical_value", "config", "reference", "created")},
        }
    else:
        out["profile"] = None
    click.echo(json.dumps(out, indent=2, default=str))


# -- profile --------------------------------------------------------------------------------


@cli.command()
@click.option("--model", default=DEFAULT_MODEL_SPEC, show_default=True, help=MODEL_HELP)
@click.option("--reference", default=None, help=REFERENCE_HELP)
@click.option("--samples", default=100, show_default=True, type=click.IntRange(min=3), help="N: how many of the model's own images the profile measures.")
@click.option("--steps", default=1500, show_default=True, type=click.IntRange(min=1), help="Adam steps per inversion.")
@click.option("--restarts", default=8, show_default=True, type=click.IntRange(min=1), help="Random restarts per image (the best one counts).")
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--metric", default="mse", show_default=True, type=click.Choice(METRIC_NAMES), help="Reconstruction loss.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated images and of the inversions.")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Significance level of Grubbs' test.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images inverted together per device call (default: the engine's per-device choice).")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="Where to write the profile JSON (default: profile-NAME.json).")
@click.option("--trim-outliers", is_flag=True, help="Leave out of mu and sigma the profile losses that repeated Grubbs tests reject as too high (failed inversions). Off by default, as in the paper.")
@click.option("--quiet", is_flag=True, help="No progress bar (for logs).")
@_handle_errors
def profile(
    model: str,
    reference: str | None,
    samples: int,
    steps: int,
    restarts: int,
    lr: float,
    metric: str,
    seed: int,
    alpha: float,
    batch_size: int | None,
    out: str | None,
    trim_outliers: bool,
    quiet: bool,
) -> None:
    """Build a model's belonging profile (run once per model; slow).

    Generates --samples images from the model, saves them as 8-bit images would be, inverts
    each on the model and on the reference, and stores the mean and spread of their
    calibrated losses. Audits must use the same model, reference and settings; they take
    their settings from the profile. The losses are also kept in OUT.progress.jsonl, so a
    stopped build resumes and a rerun with --trim-outliers or another --alpha inverts nothing.
    """
    import dataclasses

    from ronan_jax.attribution.profile import build_profile
    from ronan_jax.engine.config import InversionConfig
    from ronan_jax.models.resolver import default_reference_spec, normalize_spec

    err = _stderr()
    gen = _load_model(model, "--model")
    ref_spec = reference if reference is not None else default_reference_spec(model)
    ref = _load_reference(ref_spec, defaulted=reference is None)
    extra = {} if batch_size is None else {"max_batch": batch_size * restarts}
    config = InversionConfig(steps=steps, restarts=restarts, lr=lr, metric=metric, seed=seed, **extra)
    out_path = Path(out or f"profile-{gen.name}.json")
    # Every measured loss is kept beside the profile: a stopped build resumes, and a rerun
    # with other statistics (--alpha, --trim-outliers) inverts nothing.
    resume = out_path.with_suffix(".progress.jsonl")
    if not quiet:
        ref_name = "none (uncalibrated)" if ref is None else ref.name
        err.print(
            f"Profile of {gen.name} (reference {ref_name}): {samples} images, "
            f"{_describe_settings(config)}."
        )
    if quiet:
        built = build_profile(gen, ref, n=samples, seed=seed, config=config, alpha=alpha,
                              resume_path=resume, trim_outliers=trim_outliers)
    else:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("profile", total=samples)
            built = build_profile(
                gen, ref, n=samples, seed=seed, config=config, alpha=alpha,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                resume_path=resume, trim_outliers=trim_outliers,
            )
    built = dataclasses.replace(
        built,
        model={**built.model, "spec": normalize_spec(model)},
        reference=None if built.reference is None or ref_spec is None
        else {**built.reference, "spec": normalize_spec(ref_spec)},
    )
    built.save(out_path)
    click.echo(
        f"Wrote {out_path}: N={built.n}"
        + (f" ({len(built.trimmed)} outliers trimmed)" if trim_outliers else "")
        + f", mean calibrated loss {built.mu:.4g}, sd {built.sigma:.4g}, "
        f"Grubbs critical value {built.critical_value:.4f} (alpha {built.alpha}). "
        f"Audit with: ronan audit IMAGES --model {model} --profile {out_path}. "
        f"Measured losses kept in {resume} (a rerun of this command reuses them)."
    )
    _warn_failed_inversions(built)


def _warn_failed_inversions(profile: Profile) -> None:
    """Say so when a profile's statistics include failed inversions (it loosens every verdict)."""
    from ronan_jax.attribution.profile import failed_inversion_warning

    warning = failed_inversion_warning(profile)
    if warning:
        click.echo(f"Warning: {warning}", err=True)


# -- audit ----------------------------------------------------------------------------------


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", default=DEFAULT_MODEL_SPEC, show_default=True, help=MODEL_HELP)
@click.option("--reference", default=None, help=REFERENCE_HELP + " Must be the profile's.")
@click.option("--profile", "profile_path", default=None, type=click.Path(dir_okay=False), help="Belonging profile JSON from `ronan profile` (default: the one shipped with a builtin model).")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False), help="SQLite results database (created; re-running resumes).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images per batch and per commit (default: 16 on CPU; on accelerators what one device call takes). The engine splits a batch into device calls by itself.")
@click.option("--resize", is_flag=True, help="Resize images of another size to the model's (antialiased; recorded per image). Without it they are errors.")
@click.option("--keep-evidence", is_flag=True, help="Keep each image's reverse-engineered input and reconstructions (.npz) for the report.")
@click.option("--evidence-dir", default=None, type=click.Path(file_okay=False), help="Where --keep-evidence writes (default: DB name + '-evidence').")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Image decoding threads.")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Adam steps (default and required: the profile's).")
@click.option("--restarts", default=None, type=click.IntRange(min=1), help="Restarts per image (default and required: the profile's).")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True), help="Learning rate (default and required: the profile's).")
@click.option("--metric", default=None, type=click.Choice(METRIC_NAMES), help="Loss (default and required: the profile's).")
@click.option("--seed", default=None, type=int, help="Inversion seed (default and required: the profile's).")
@click.option("--devices", default=None, type=click.IntRange(min=1), help="Local devices each batch is split over (data parallel; default: all of this process's).")
@click.option("--coordinator", default=None, envvar="RONAN_COORDINATOR", metavar="HOST:PORT", help="Multi-host: address of process 0's jax.distributed coordinator (env RONAN_COORDINATOR). Each process audits its share of INPUTS into its own database.")
@click.option("--num-processes", default=None, envvar="RONAN_NUM_PROCESSES", type=click.IntRange(min=1), help="Multi-host: number of processes (env RONAN_NUM_PROCESSES). Without --coordinator, with --process-id: independent workers, no jax.distributed.")
@click.option("--process-id", default=None, envvar="RONAN_PROCESS_ID", type=click.IntRange(min=0), help="Multi-host: this process's id, 0 .. N-1 (env RONAN_PROCESS_ID).")
@click.option("--distributed", is_flag=True, envvar="RONAN_DISTRIBUTED", help="Multi-host: start jax.distributed and let JAX detect the cluster (Cloud TPU VMs, SLURM) (env RONAN_DISTRIBUTED=1).")
@click.option("--quiet", is_flag=True, help="No progress bar, only the final summary (for logs).")
@_handle_errors
def audit(
    inputs: tuple[str, ...],
    model: str,
    reference: str | None,
    profile_path: str | None,
    db: str,
    batch_size: int | None,
    resize: bool,
    keep_evidence: bool,
    evidence_dir: str | None,
    workers: int | None,
    steps: int | None,
    restarts: int | None,
    lr: float | None,
    metric: str | None,
    seed: int | None,
    devices: int | None,
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    distributed: bool,
    quiet: bool,
) -> None:
    """Judge every image in INPUTS: was it generated by the model?

    INPUTS are image files, directories (searched recursively), glob patterns (quote them:
    'shots/**/*.png'), tar archives (.tar, .tar.gz, ...; streamed, never extracted) and text
    files listing one path per line (.txt, .lst, or @FILE). Images must have the model's
    size unless --resize is given; colour and greyscale are converted (BT.601 luma),
    transparency is composited on white.

    Each image gets one row in --db: its verdict, losses, z-score and p-value, or the reason
    it could not be judged (corrupt, truncated, wrong size, ...), which does not stop the
    run. Rows are saved after every batch: Ctrl-C stops after the current batch (exit 130),
    and running the same command again resumes where it stopped.

    Scale out: each batch is split over all local devices (--devices). Across hosts, run the
    same command on every host with --coordinator/--num-processes/--process-id (or
    --distributed on Cloud TPU VMs): each process judges a fixed share of INPUTS (by a hash of
    the path) and writes DB.shard-I-of-N (or DB with {process_id} filled in); then
    `ronan merge OUT.sqlite SHARDS...`. Every host must see INPUTS under the same paths.
    """
    from ronan_jax.audit import AuditConfig
    from ronan_jax.audit.shards import ProcessSettings, initialize_processes
    from ronan_jax.engine.mesh import device_count

    try:
        shard = initialize_processes(
            ProcessSettings(coordinator, num_processes, process_id, distributed)
        )
        if devices is not None:
            device_count(devices)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except RuntimeError as exc:  # jax.distributed could not start (unreachable coordinator)
        raise click.ClickException(f"jax.distributed did not start: {exc}") from exc
    db = shard.db_path(db)
    try:
        cfg = AuditConfig(
            model=model,
            reference=reference,
            profile=profile_path,
            db=db,
            batch_size=batch_size,
            resize=resize,
            keep_evidence=keep_evidence or evidence_dir is not None,
            evidence_dir=evidence_dir,
            workers=workers,
            quiet=quiet,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    flags = {"steps": steps, "restarts": restarts, "lr": lr, "metric": metric, "seed": seed,
             "devices": devices}
    summary, _, _ = _run_audit_command(
        inputs, cfg, flags, shard=shard if shard.count > 1 else None
    )
    if summary.stopped:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


# -- report / export ------------------------------------------------------------------------


def _pick_run(db: str, run: str | None) -> tuple[Any, list[Any]]:
    """The run whose results to show: ``run`` (an id or results-key prefix) or the latest."""
    from ronan_jax.results.store import ResultStore

    with ResultStore(db) as store:
        runs = store.runs()
    if not runs:
        raise click.UsageError(f"{db} holds no audit runs")
    if run is None:
        return runs[-1], runs
    matches = [r for r in runs if r.run_id.startswith(run) or r.config_key.startswith(run)]
    if not matches:
        raise click.BadParameter(
            f"no run or results key starts with {run!r}; runs: "
            + ", ".join(f"{r.run_id[:12]} (key {r.config_key[:12]})" for r in runs),
            param_hint="--run",
        )
    return matches[-1], runs


RUN_HELP = "Run id or results-key prefix to use (default: the latest run's settings)."


@cli.command()
@click.argument("db", type=click.Path(exists=True, dir_okay=False))
@click.option("--labels", default=None, type=click.Path(exists=True, dir_okay=False), help="Ground truth: CSV/TSV lines 'path,label', label 1/0 or belonging/non-belonging; tar members as 'archive.tar::member'. Adds the confusion matrix, accuracy, AUC and ROC.")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="HTML file to write (default: DB name + .html).")
@click.option("--run", "run", default=None, help=RUN_HELP)
@_handle_errors
def report(db: str, labels: str | None, out: str | None, run: str | None) -> None:
    """Write a self-contained HTML report of the audit results in DB.

    Shows the calibrated losses against the model's belonging distribution and the Grubbs
    threshold, verdict counts, the most and least belonging images next to their
    reconstructions (audit with --keep-evidence), and the run's settings.
    """
    from ronan_jax.audit import read_labels
    from ronan_jax.results.store import ResultStore

    chosen, runs = _pick_run(db, run)
    truth = None
    if labels is not None:
        try:
            truth = read_labels(labels)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--labels") from exc
    with ResultStore(db) as store:
        rows = list(store.iter_results(chosen.config_key))
    out_path = Path(out) if out else Path(db).with_suffix(".html")
    path = _write_report(rows, chosen, runs, truth, out_path, db)
    click.echo(f"Wrote {path} ({_plural(len(rows), 'image')}).")


def _write_report(rows: list[dict[str, Any]], chosen: Any, runs: list[Any], labels: dict[str, bool] | None, out_path: Path, db: str) -> Path:
    try:
        from ronan_jax.report import render_report
    except Exception as exc:
        raise click.UsageError(f"the report module is not available: {exc}") from exc
    config = chosen.config
    info = config.get("info") or {}
    profile = info.get("profile") or config.get("profile")
    ref = config.get("reference")
    meta = {
        "database": str(Path(db).absolute()),
        "model": f"{config['model'].get('name')} ({str(config['model'].get('param_hash'))[:12]})",
        "model spec": info.get("model_spec"),
        "reference": "none (uncalibrated)" if not ref else f"{ref.get('name')} ({str(ref.get('param_hash'))[:12]})",
        "profile": f"{info.get('profile_path', '')} (id {config.get('profile', {}).get('id')})",
        "settings": config.get("settings"),
        "resize": config.get("resize"),
        "results key": chosen.config_key,
        "runs with these settings": sum(1 for r in runs if r.config_key == chosen.config_key),
        "latest run": f"{chosen.run_id} ({chosen.created})",
        "versions": config.get("versions"),
    }
    work = _work_note(db, chosen.config_key)
    if work:
        meta["inversion work"] = work
    return render_report(rows, profile, meta, labels, out_path=out_path)


def _work_note(db: str, config_key: str) -> str | None:
    """The telemetry of every run of ``config_key`` in one sentence (None without any)."""
    from ronan_jax.results.store import ResultStore
    from ronan_jax.results.telemetry import summarize

    with ResultStore(db) as store:
        work = summarize(store.iter_telemetry(config_key))
    return work.describe() if work.steps_budget else None


@cli.command()
@click.argument("db", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(("csv", "jsonl")), default="csv", show_default=True, help="CSV (header line) or JSON Lines.")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False, allow_dash=True), help="File to write (default: standard output).")
@click.option("--run", "run", default=None, help=RUN_HELP)
@_handle_errors
def export(db: str, fmt: str, out: str | None, run: str | None) -> None:
    """Export the results in DB, one record per image.

    Fields: path, member (inside a tar), sha256, verdict (belonging / non-belonging /
    error), loss, ref_loss, calibrated_loss, z, critical_value, p_value, error_kind, error,
    then size, mode, timings, evidence path, run id and results key. Empty/null = no value.
    """
    from ronan_jax.audit import export_rows
    from ronan_jax.results.store import ResultStore

    chosen, _ = _pick_run(db, run)
    with ResultStore(db) as store:
        rows = store.iter_results(chosen.config_key)
        if out is None or out == "-":
            n = export_rows(rows, fmt, sys.stdout)
            sys.stdout.flush()
        else:
            with open(out, "w", encoding="utf-8", newline="") as f:
                n = export_rows(rows, fmt, f)
            click.echo(f"Wrote {_plural(n, 'record')} to {out}.", err=True)


@cli.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_handle_errors
def merge_command(out: str, shards: tuple[str, ...]) -> None:
    """Combine the results databases SHARDS of one audit (split over processes or hosts)
    into OUT (created, or added to).

    Refuses (exit 2) databases whose results come from different settings (model, reference,
    profile, inversion settings, decode rules) and names what differs. Merging again is
    harmless; a judged image is never replaced by an error row. Warns when shards of a split
    run are missing.
    """
    from ronan_jax.results.store import ResultStore, merge

    n = merge(out, shards)
    with ResultStore(out) as store:
        runs = store.runs()
        counts = store.count_by_verdict()
    split = {
        (int(s["count"]), int(s["index"]))
        for r in runs
        if isinstance(s := (r.config.get("info") or {}).get("shard"), dict)
    }
    click.echo(
        f"Merged {_plural(n, 'row')} from {_plural(len(shards), 'database')} into {out}: "
        f"{counts['belonging']} belonging, {counts['non-belonging']} non-belonging, "
        f"{_plural(counts['error'], 'error')} in all."
    )
    for count in sorted({c for c, _ in split}):
        missing = sorted(set(range(count)) - {i for c, i in split if c == count})
        if missing:
            click.echo(
                f"Warning: no run of process {', '.join(map(str, missing))} of {count} is in "
                f"{out}; merge its database too for the complete audit.",
                err=True,
            )


# -- convert --------------------------------------------------------------------------------


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write (new or empty).")
@click.option("--format", "fmt", default=None, type=click.Choice(("dcgan", "sd-vae", "diffusers-unet", "consistency")), help="Source format (default: detected from SRC).")
@click.option("--name", default=None, help="Model name recorded in the card (default: the output folder's name).")
@click.option("--key", default=None, help="DCGAN: entry of a wrapped checkpoint dict holding the generator's state dict (e.g. netG_state_dict).")
@click.option("--nz", type=click.IntRange(min=1), default=None, help="DCGAN: noise size (lets a conditional model's class count be inferred).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="DCGAN: classes of a conditional model (one-hot concatenated to the noise).")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Expected output size (checked against the weights; SD-VAE/UNet: native size).")
@click.option("--resize-to", type=click.IntRange(min=0), default=0, help="DCGAN: resize the output to this size (antialiased), as the authors did for CIFAR-10.")
@click.option("--steps", "num_inference_steps", type=click.IntRange(min=1), default=None, help="UNet/consistency: sampler steps of the generator (each Adam step runs them all).")
@click.option("--class-label", type=int, default=None, help="Class-conditional UNet/consistency: the fixed class label.")
@_handle_errors
def convert(src: str, out: str, fmt: str | None, name: str | None, key: str | None, nz: int | None,
            num_classes: int | None, image_size: int | None, resize_to: int,
            num_inference_steps: int | None, class_label: int | None) -> None:
    """Convert a PyTorch or diffusers checkpoint SRC into a ronan-jax model directory.

    Formats: a pytorch/examples DCGAN generator state dict (.pth/.pt/.bin/.safetensors, bare
    or wrapped in a training checkpoint, legacy or CUDA-saved), a diffusers AutoencoderKL
    folder (Stable Diffusion VAE: the decoder becomes the generator, its latent the input), a
    diffusers UNet2DModel folder (+ scheduler: deterministic DDIM) or a consistency model.
    Nothing in the checkpoint is executed. The result loads with --model OUT.
    """
    from converters import ConversionError
    from converters.api import convert as run_convert
    from converters.api import detect_format

    fmt = fmt or detect_format(src)
    options: dict[str, Any] = {}
    given = {"key": key, "nz": nz, "num_classes": num_classes, "image_size": image_size,
             "num_inference_steps": num_inference_steps, "class_label": class_label}
    if resize_to:
        given["resize_to"] = resize_to
    options = {k: v for k, v in given.items() if v is not None}
    try:
        card = run_convert(src, out, fmt, name=name, **options)
    except (ConversionError, TypeError, ValueError) as exc:
        raise click.UsageError(f"cannot convert {src}: {exc}") from exc
    shape = card.get("summary", {}).get("output_shape") or card.get("summary", {}).get("image_size")
    click.echo(f"Found {fmt} ({card['architecture']}); wrote {out} "
               f"(param hash {card['param_hash'][:12]}{', output ' + str(shape) if shape else ''}).")
    click.echo(f"Next: ronan profile --model {out} -o {Path(out).name}.profile.json")


# -- demo -----------------------------------------------------------------------------------


def demo_profile_path(given: str | None) -> Path | None:
    """The demo's profile: ``--profile``; else the shipped demo profile
    ``zoo/profiles/dcgan-mnist-demo.json`` (built with fewer inversion steps than the full
    profile, so the demo finishes in minutes on a CPU); else the full ``dcgan-mnist.json``."""
    from ronan_jax.models.resolver import shipped_profile, shipped_profile_location

    if given:
        return Path(given)
    demo = shipped_profile_location(DEMO_PROFILE_NAME)
    if demo.is_file():
        return demo
    return shipped_profile(f"builtin:{DEMO_MODEL}")


def _demo_settings_note(prof: Path) -> str:
    """One line saying which settings the demo judges with, and how they compare with the
    full shipped profile's."""
    from ronan_jax.models.resolver import shipped_profile

    def settings(path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads(Path(path).read_text()).get("config") or {})
        except (OSError, ValueError):
            return {}

    mine = settings(prof)
    line = (
        f"Demo profile {prof}: {mine.get('steps')} steps x {mine.get('restarts')} restarts "
        f"({mine.get('metric')}); the audit uses exactly these settings."
    )
    full = shipped_profile(f"builtin:{DEMO_MODEL}")
    if full is not None and full.resolve() != Path(prof).resolve():
        theirs = settings(full)
        if (theirs.get("steps"), theirs.get("restarts")) != (mine.get("steps"), mine.get("restarts")):
            line += (
                f" A full audit uses {theirs.get('steps')} steps x {theirs.get('restarts')} "
                "restarts (the shipped full profile); the demo uses fewer to finish in minutes "
                "on a CPU, and its profile was built with the same reduced settings."
            )
    return line


def prepare_demo_images(out_dir: Path, n: int, seed: int = DEMO_SEED) -> dict[str, bool]:
    """Write the demo's images as PNG files under ``out_dir/images`` and return their labels
    (absolute path -> belonging): ``n`` generated by dcgan-mnist (belonging), ``n`` real
    held-out MNIST digits and ``n`` generated by vae-mnist (both non-belonging). Generated
    images are 8-bit PNGs, as images in the wild are."""
    import jax
    import numpy as np

    from ronan_jax.audit import save_png_images

    zoo_mod = _zoo_module()
    images = out_dir / "images"
    own = np.asarray(zoo_mod.load(DEMO_MODEL).generate(jax.random.key(seed), n))
    other = np.asarray(zoo_mod.load(DEMO_OTHER_MODEL).generate(jax.random.key(seed), n))
    real = zoo_mod.load_samples()["mnist_unseen"][:n]
    labels: dict[str, bool] = {}
    for folder, arr, truth in (
        (f"generated-{DEMO_MODEL}", own, True),
        ("real-mnist-unseen", real, False),
        (f"generated-{DEMO_OTHER_MODEL}", other, False),
    ):
        for p in save_png_images(arr, images / folder, folder):
            labels[str(p.absolute())] = truth
    return labels


@cli.command()
@click.option("-o", "--out", default="ronan-demo", show_default=True, type=click.Path(file_okay=False), help="Folder for the demo's images, database and report.")
@click.option("--n", "n", default=DEMO_N, show_default=True, type=click.IntRange(1, 100), help="Images of each kind (3 kinds).")
@click.option("--profile", "profile_path", default=None, type=click.Path(exists=True, dir_okay=False), help="Profile of dcgan-mnist to use instead of the shipped one (its settings are used).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images per batch.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def demo(out: str, n: int, profile_path: str | None, batch_size: int | None, quiet: bool) -> None:
    """Audit a small labelled mix against the built-in dcgan-mnist (needs no arguments).

    The mix: N images generated by dcgan-mnist (belonging), N real held-out MNIST digits and
    N images generated by another model, vae-mnist (both non-belonging), written as PNG
    files so the real pipeline runs, then audited against dcgan-mnist. Prints the confusion
    table and writes OUT/report.html; re-running resumes from OUT/demo.sqlite.

    Settings: the demo judges with the shipped demo profile (dcgan-mnist-demo.json), which
    was built with FEWER inversion steps/restarts than a full audit uses, so that it runs
    in minutes on a laptop CPU; the audit always uses exactly the settings of the profile it
    judges with (they are printed). Without a demo profile, the full one is used (slow on
    a CPU). --profile picks another profile of dcgan-mnist.
    """
    from rich.table import Table

    from ronan_jax.audit import AuditConfig
    from ronan_jax.results.store import ResultStore

    err = _stderr()
    out_dir = Path(out).absolute()
    prof = demo_profile_path(profile_path)
    if prof is None:
        raise click.UsageError(
            f"no profile is shipped for {DEMO_MODEL} in this install; build one with "
            f"`ronan profile --model builtin:{DEMO_MODEL} -o {DEMO_MODEL}.json` and run "
            f"`ronan demo --profile {DEMO_MODEL}.json`"
        )
    click.echo(_demo_settings_note(prof))
    if not quiet:
        err.print(f"Writing {3 * n} demo images to {out_dir / 'images'} ...")
    labels = prepare_demo_images(out_dir, n)
    labels_file = out_dir / "labels.csv"
    labels_file.write_text("path,label\n" + "".join(f"{p},{int(v)}\n" for p, v in labels.items()))
    cfg = AuditConfig(
        model=f"builtin:{DEMO_MODEL}",
        profile=str(prof),
        db=str(out_dir / "demo.sqlite"),
        batch_size=batch_size,
        keep_evidence=True,
        evidence_dir=str(out_dir / "evidence"),
        quiet=quiet,
    )
    summary, _config, _ = _run_audit_command(
        [str(out_dir / "images")], cfg, {}, info={"demo": True}, label="demo"
    )
    from ronan_jax.report import compute_summary

    with ResultStore(cfg.db) as store:
        rows = [r for r in store.iter_results(summary.config_key) if str(Path(r["path"])) in labels]
    scored = compute_summary(rows, labels)
    c = scored.confusion
    table = Table(title="Demo: verdicts against the truth (belonging = generated by dcgan-mnist)")
    table.add_column("")
    table.add_column("judged belonging", justify="right")
    table.add_column("judged non-belonging", justify="right")
    if c is not None:
        table.add_row("truly belonging", f"TP {c.tp}", f"FN {c.fn}")
        table.add_row("truly non-belonging", f"FP {c.fp}", f"TN {c.tn}")
    console = _stdout()
    console.print(table)
    acc = "n/a" if scored.accuracy is None else f"{scored.accuracy:.1%}"
    auc = "n/a" if scored.auc is None else f"{scored.auc:.3f}"
    console.print(
        f"Accuracy {acc} over {scored.n_labelled} judged images, AUC {auc}; "
        f"{scored.counts.get('error', 0)} errors."
    )
    with ResultStore(cfg.db) as store:
        runs = store.runs()
    chosen = next(r for r in runs if r.run_id == summary.run_id)
    report_path = _write_report(rows, chosen, runs, labels, out_dir / "report.html", cfg.db)
    console.print(f"Report: {report_path}  (labels for `ronan report --labels`: {labels_file})")
    if summary.stopped:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ronan`` script; returns the exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="ronan")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
