"""The ``ronan`` command group, its entry point and the plumbing every command shares:
consoles, progress bars, Ctrl-C handling and the mapping of library errors to exit codes.

Exit codes: 0 when a command completed (images that could not be judged are counted in the
summary, not failures); 2 for usage and configuration errors (bad flags, a model path that is
not a checkpoint, settings that differ from the profile's); 130 after Ctrl-C.

Heavy modules (JAX, the zoo, the report) are imported inside the commands, so ``--help`` is
fast and checkpoint paths work even where the zoo is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

    from ronan_jax.audit import AuditProgress

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_MODEL_SPEC = "builtin:dcgan-mnist"  # = ronan_jax.audit.DEFAULT_MODEL_SPEC (checked in tests)
DEFAULT_DB = "ronan-results.sqlite"  # = ronan_jax.audit.DEFAULT_DB (not imported: keeps --help fast)

F = TypeVar("F", bound=Callable[..., Any])

MODEL_HELP = (
    "Model to inspect: builtin:NAME (see `ronan zoo`) or the path of a checkpoint directory."
)
REFERENCE_HELP = (
    "Reference model that calibrates losses (builtin:NAME or checkpoint path), or `none` for "
    "uncalibrated losses. Default: the model's documented default reference."
)
CLASS_RULES = ("known", "min", "zero")  # = ronan_jax.engine.config.CLASS_RULES (checked in tests)
ROBUST_MODES = ("off", "tone", "tone+blur", "jpeg", "tone+jpeg", "tone+resample", "tone+resample+jpeg")  # = ronan_jax.engine.config.ROBUST_MODES (checked in tests)
CLASS_RULE_HELP = (
    "Class-conditional models: the class an image is inverted with. known: each image's class "
    "(from the profile's draw, --class or --classes-from); min: the class is unknown, the "
    "minimum over all C classes (RONAN's rule; C times the inversion cost); zero: an all-zero "
    "class vector (the StyleGAN authors' choice)."
)
SECOND_CHANCE_K = 5.0  # = ronan_jax.attribution.second_chance.DEFAULT_K (checked in tests)
WARM_START_HELP = (
    "Warm start: every image gets one more inversion run, started at the model's (and the "
    "reference's) encoder output, besides the random restarts; a model without an encoder "
    "runs cold. Train an encoder with `ronan encoder train`."
)
SECOND_CHANCE_HELP = (
    "Second chance: invert again on the model, with new restarts, every image whose first-pass "
    "calibrated loss is above K times the median of the profile's first-pass ones (a failed "
    "inversion), keeping the lower loss; the profile's images and audited ones alike. "
    f"Without a value K = {SECOND_CHANCE_K:g}; 0: off."
)
PLAN_FIELD_FLAGS = {"model": "--model", "reference": "--reference", "profile": "--profile",
                    "classes": "--class / --classes-from", "preset": "--preset"}
"""The flag that sets each :class:`ronan_jax.audit.AuditConfig` field a plan error names."""
PRESET_NAMES = ("paper", "fast", "express")  # = ronan_jax.attribution.presets.PRESETS (checked in tests)
PRESET_HELP = (
    "Inversion budget: paper (the paper's 1500 steps x 8 restarts, cold), fast (1500 steps x 1 "
    "restart plus a warm start at the model's encoder, and the second chance: 32 % of the "
    "paper's steps, within 0.5 points of its accuracy on every measured row) or express (300 "
    "steps x 2 restarts plus the warm start and the second chance: 14 % of the steps, up to "
    "1.5 points lower); measured in benchmarks/RESULTS.md, 'Warm starts'."
)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def stdout() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _config_error_types() -> tuple[type[BaseException], ...]:
    """Library errors that mean "the user asked for something impossible" (exit 2)."""
    from ronan_jax.attribution.profile import ProfileMismatchError
    from ronan_jax.attribution.warm_start import WarmStartError
    from ronan_jax.models.checkpoint import CheckpointError
    from ronan_jax.models.resolver import ModelSpecError
    from ronan_jax.report.metadata import RunSelectionError

    return (ModelSpecError, CheckpointError, ProfileMismatchError, RunSelectionError, WarmStartError)


def _is_insufficient_memory(exc: MemoryError) -> bool:
    """Whether ``exc`` is the engine's refusal to start a call that cannot fit in memory
    (not an allocation that failed)."""
    from ronan_jax.engine.memory import InsufficientMemoryError

    return isinstance(exc, InsufficientMemoryError)


class EnvironmentProblem(click.ClickException):
    """A command that could not complete because of its environment (a full disk, a
    read-only folder, a damaged database): exit 2 with a one-line reason, no usage text."""

    exit_code = EXIT_USAGE


def environment_problem(exc: BaseException) -> EnvironmentProblem:
    """The one-line reason of an OS or SQLite failure, naming the file when known."""
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        reason = exc.strerror or str(exc)
        return EnvironmentProblem(f"cannot complete: {reason}{':' if where else ''}{where}")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return EnvironmentProblem(f"cannot complete: {first}")


def usage_error(exc: BaseException) -> click.UsageError:
    """The click error (exit 2) for a library error, naming the flag at fault when known."""
    from ronan_jax.audit import AuditPlanError

    if isinstance(exc, AuditPlanError) and exc.field in PLAN_FIELD_FLAGS:
        return click.BadParameter(str(exc), param_hint=PLAN_FIELD_FLAGS[exc.field])
    return click.UsageError(str(exc))


def handle_errors(fn: F) -> F:
    """Map Ctrl-C to exit 130 and configuration errors to click usage errors (exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ronan_jax.audit import AuditPlanError

        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("Aborted (Ctrl-C).", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except click.ClickException:
            raise
        except Exception as exc:
            import sqlite3

            from ronan_jax.results.store import StoreError

            if isinstance(exc, (AuditPlanError, *_config_error_types())):
                raise usage_error(exc) from exc
            if isinstance(exc, StoreError):  # a database that cannot be used as asked
                raise EnvironmentProblem(str(exc)) from exc
            if isinstance(exc, MemoryError) and _is_insufficient_memory(exc):
                raise EnvironmentProblem(str(exc)) from exc
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise environment_problem(exc) from exc
            raise

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def graceful_interrupt(stop: threading.Event, console: Console) -> Iterator[None]:
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


class ProgressBar:
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

    def __enter__(self) -> ProgressBar:
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
