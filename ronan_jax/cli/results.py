"""``ronan report``, ``ronan export`` and ``ronan merge``: results out of a database."""

from __future__ import annotations

import sys

import click

from ronan_jax.cli.app import cli, handle_errors, plural

RUN_HELP = "Run id or results-key prefix to use (default: the latest run's settings)."
EXPORT_FORMATS = ("csv", "jsonl")  # = ronan_jax.results.export.EXPORT_FORMATS (checked in tests)


@cli.command()
@click.argument("db", type=click.Path(exists=True, dir_okay=False))
@click.option("--labels", default=None, type=click.Path(exists=True, dir_okay=False), help="Ground truth: CSV/TSV lines 'path,label', label 1/0 or belonging/non-belonging; tar members as 'archive.tar::member'. Adds the confusion matrix, accuracy, AUC and ROC.")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="HTML file to write (default: DB name + .html).")
@click.option("--run", "run", default=None, help=RUN_HELP)
@handle_errors
def report(db: str, labels: str | None, out: str | None, run: str | None) -> None:
    """Write a self-contained HTML report of the audit results in DB.

    Shows the calibrated losses against the model's belonging distribution and the Grubbs
    threshold, verdict counts, the most and least belonging images next to their
    reconstructions (audit with --keep-evidence), and the run's settings.
    """
    from ronan_jax.report import write_report
    from ronan_jax.results.labels import read_labels

    truth = None
    if labels is not None:
        try:
            truth = read_labels(labels)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--labels") from exc
    path, n = write_report(db, out, truth, run)
    click.echo(f"Wrote {path} ({plural(n, 'image')}).")


@cli.command()
@click.argument("db", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="csv", show_default=True, help="CSV (header line) or JSON Lines.")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False, allow_dash=True), help="File to write (default: standard output).")
@click.option("--run", "run", default=None, help=RUN_HELP)
@handle_errors
def export(db: str, fmt: str, out: str | None, run: str | None) -> None:
    """Export the results in DB, one record per image.

    Fields: path, member (inside a tar), sha256, verdict (belonging / non-belonging /
    error), loss, ref_loss, calibrated_loss, z, critical_value, p_value, error_kind, error,
    then size, mode, timings, evidence path, run id and results key. Empty/null = no value.
    """
    from ronan_jax.report import pick_run
    from ronan_jax.results.export import export_rows
    from ronan_jax.results.store import ResultStore

    chosen, _ = pick_run(db, run)
    with ResultStore(db, readonly=True) as store:
        rows = store.iter_results(chosen.config_key)
        if out is None or out == "-":
            n = export_rows(rows, fmt, sys.stdout)
            sys.stdout.flush()
        else:
            with open(out, "w", encoding="utf-8", newline="") as f:
                n = export_rows(rows, fmt, f)
            click.echo(f"Wrote {plural(n, 'record')} to {out}.", err=True)


@cli.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@handle_errors
def merge_command(out: str, shards: tuple[str, ...]) -> None:
    """Combine the results databases SHARDS of one audit (split over processes or hosts)
    into OUT (created, or added to).

    Refuses (exit 2) databases whose results come from different settings (model, reference,
    profile, inversion settings, decode rules) and names what differs. Merging again is
    harmless; a judged image is never replaced by an error row. Warns when shards of a split
    run are missing.
    """
    from ronan_jax.attribution.verdicts import BELONGING, ERROR, NON_BELONGING
    from ronan_jax.results.merge import merge, missing_shards
    from ronan_jax.results.store import ResultStore

    n = merge(out, shards)
    with ResultStore(out) as store:
        runs = store.runs()
        counts = store.count_by_verdict()
    click.echo(
        f"Merged {plural(n, 'row')} from {plural(len(shards), 'database')} into {out}: "
        f"{counts[BELONGING]} belonging, {counts[NON_BELONGING]} non-belonging, "
        f"{plural(counts[ERROR], 'error')} in all."
    )
    for count, missing in missing_shards(runs).items():
        click.echo(
            f"Warning: no run of process {', '.join(map(str, missing))} of {count} is in "
            f"{out}; merge its database too for the complete audit.",
            err=True,
        )
