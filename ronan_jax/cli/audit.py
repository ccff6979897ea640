"""``ronan audit``: judge every input image against a model and store one row per image."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ronan_jax.cli.app import (
    CLASS_RULE_HELP,
    CLASS_RULES,
    DEFAULT_DB,
    DEFAULT_MODEL_SPEC,
    EXIT_INTERRUPTED,
    MODEL_HELP,
    PRESET_HELP,
    PRESET_NAMES,
    REFERENCE_HELP,
    SECOND_CHANCE_HELP,
    SECOND_CHANCE_K,
    WARM_START_HELP,
    ProgressBar,
    cli,
    graceful_interrupt,
    handle_errors,
    plural,
    stderr,
)
from ronan_jax.cli.profile import METRIC_NAMES, warn_failed_inversions

if TYPE_CHECKING:
    from ronan_jax.audit import AuditConfig, AuditSummary
    from ronan_jax.audit.shards import ProcessShard
    from ronan_jax.engine.config import InversionConfig


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
@click.option("--preset", default=None, type=click.Choice(PRESET_NAMES), help="Builtin models: judge with the profile shipped for this inversion preset (default paper). " + PRESET_HELP)
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Adam steps (default and required: the profile's).")
@click.option("--restarts", default=None, type=click.IntRange(min=1), help="Restarts per image (default and required: the profile's).")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True), help="Learning rate (default and required: the profile's).")
@click.option("--metric", default=None, type=click.Choice(METRIC_NAMES), help="Loss (default and required: the profile's).")
@click.option("--seed", default=None, type=int, help="Inversion seed (default and required: the profile's).")
@click.option("--class", "class_label", default=None, type=click.IntRange(min=0), help="Class-conditional models judged with each image's class: the class of every input.")
@click.option("--classes-from", default=None, type=click.Path(dir_okay=False), help="Class-conditional models: CSV/TSV lines 'path,class' giving each input's class (tar members as 'archive.tar::member'); inputs it does not list are 'no-class' error rows.")
@click.option("--class-rule", default=None, type=click.Choice(CLASS_RULES), help=CLASS_RULE_HELP + " Default and required: the profile's.")
@click.option("--second-chance", default=None, is_flag=False, flag_value=SECOND_CHANCE_K, type=click.FloatRange(min=0), metavar="[K]", help=SECOND_CHANCE_HELP + " Default and required: the profile's (its level is the profile's).")
@click.option("--second-restarts", default=None, type=click.IntRange(min=1), help="Second chance: restarts of the second pass (default and required: the profile's).")
@click.option("--second-steps", default=None, type=click.IntRange(min=1), help="Second chance: steps of the second pass (default and required: the profile's).")
@click.option("--warm-start/--cold-start", "warm_start", default=None, help=WARM_START_HELP + " Default and required: the profile's.")
@click.option("--devices", default=None, type=click.IntRange(min=1), help="Local devices each batch is split over (data parallel; default: all of this process's).")
@click.option("--coordinator", default=None, envvar="RONAN_COORDINATOR", metavar="HOST:PORT", help="Multi-host: address of process 0's jax.distributed coordinator (env RONAN_COORDINATOR). Each process audits its share of INPUTS into its own database.")
@click.option("--num-processes", default=None, envvar="RONAN_NUM_PROCESSES", type=click.IntRange(min=1), help="Multi-host: number of processes (env RONAN_NUM_PROCESSES). Without --coordinator, with --process-id: independent workers, no jax.distributed.")
@click.option("--process-id", default=None, envvar="RONAN_PROCESS_ID", type=click.IntRange(min=0), help="Multi-host: this process's id, 0 .. N-1 (env RONAN_PROCESS_ID).")
@click.option("--distributed", is_flag=True, envvar="RONAN_DISTRIBUTED", help="Multi-host: start jax.distributed and let JAX detect the cluster (Cloud TPU VMs, SLURM) (env RONAN_DISTRIBUTED=1).")
@click.option("--quiet", is_flag=True, help="No progress bar, only the final summary (for logs).")
@handle_errors
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
    preset: str | None,
    steps: int | None,
    restarts: int | None,
    lr: float | None,
    metric: str | None,
    seed: int | None,
    class_label: int | None,
    classes_from: str | None,
    class_rule: str | None,
    second_chance: float | None,
    second_restarts: int | None,
    second_steps: int | None,
    warm_start: bool | None,
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
    try:
        cfg = AuditConfig(
            model=model,
            reference=reference,
            profile=profile_path,
            db=shard.db_path(db),
            batch_size=batch_size,
            resize=resize,
            keep_evidence=keep_evidence or evidence_dir is not None,
            evidence_dir=evidence_dir,
            workers=workers,
            quiet=quiet,
            inversion={"steps": steps, "restarts": restarts, "lr": lr, "metric": metric,
                       "seed": seed, "class_rule": class_rule, "second_chance": second_chance,
                       "second_restarts": second_restarts, "second_steps": second_steps,
                       "warm_start": warm_start, "devices": devices},
            class_label=class_label,
            classes_from=classes_from,
            preset=preset,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    summary = run_audit_command(inputs, cfg, shard=shard if shard.count > 1 else None)
    if summary.stopped:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


def run_audit_command(
    inputs: Sequence[str],
    cfg: AuditConfig,
    *,
    info: dict[str, Any] | None = None,
    label: str = "auditing",
    shard: ProcessShard | None = None,
) -> AuditSummary:
    """Plan the audit of ``cfg``, run it (of ``shard``'s inputs only, when given) with a
    progress bar and Ctrl-C handling, and print the summary. Shared by ``audit`` and ``demo``."""
    from ronan_jax.audit import plan_audit, run_audit
    from ronan_jax.results.store import ResultStore

    err = stderr()
    plan = plan_audit(cfg, inputs, info)
    warn_failed_inversions(plan.profile)
    settings = plan.describe_settings()
    if not cfg.quiet:
        ref_name = "none (uncalibrated)" if plan.reference is None else plan.reference.name
        err.print(
            f"Model {plan.model.name}, reference {ref_name}, profile {plan.info['profile_path']} "
            f"(N={plan.profile.n}, id {plan.profile.id}); {settings}."
        )
        err.print(placement_note(plan.config, shard, cfg.db))
    stop = threading.Event()
    with ResultStore(cfg.db) as store, graceful_interrupt(stop, err):
        bar = contextlib.nullcontext() if cfg.quiet else ProgressBar(err, label)
        with bar:
            summary = run_audit(
                list(inputs), plan, store, progress=None if cfg.quiet else bar,  # type: ignore[arg-type]
                stop=stop, shard=shard,
            )
    click.echo(summary_paragraph(summary, plan.model.name, settings))
    return summary


def summary_paragraph(summary: AuditSummary, model: str, settings: str) -> str:
    """The one-paragraph account printed at the end of an audit."""
    from ronan_jax.attribution.verdicts import BELONGING, ERROR, NON_BELONGING

    kinds = ", ".join(f"{n} {k}" for k, n in summary.error_kinds.items())
    errors = plural(summary.errors, "error") + (f" ({kinds})" if kinds else "")
    head = "Stopped early (Ctrl-C) after" if summary.stopped else "Audited"
    parts = [
        f"{head} {plural(summary.processed, 'image')} against {model} "
        f"({settings}) in {summary.wall_s:.1f} s ({summary.images_per_s:.2f} judged images/s): "
        f"{summary.belonging} belonging, {summary.non_belonging} non-belonging, {errors}."
    ]
    done_before = summary.skipped - summary.repeated
    if done_before:
        parts.append(f"{plural(done_before, 'input')} already done were skipped (resume).")
    if summary.repeated:
        parts.append(f"{plural(summary.repeated, 'input')} named twice were judged once.")
    if summary.steps_budget:
        parts.append(summary.work.describe())
    t = summary.totals
    parts.append(
        f"Results are in {summary.db_path} (run {summary.run_id[:12]}); all rows of these "
        f"settings: {t.get(BELONGING, 0)} belonging, {t.get(NON_BELONGING, 0)} "
        f"non-belonging, {t.get(ERROR, 0)} errors."
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


def placement_note(config: InversionConfig, shard: ProcessShard | None, db: str) -> str:
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
