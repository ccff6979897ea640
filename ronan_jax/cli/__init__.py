"""The ``ronan`` command line: one small module per command group. Each parses its flags,
calls one library function, prints, and maps library errors to exit codes
(:mod:`ronan_jax.cli.app`). Also runs as ``python -m ronan_jax.cli``."""

from ronan_jax.cli import audit, convert, demo, encoder, profile, results, zoo  # noqa: F401  (registers)
from ronan_jax.cli.app import EXIT_INTERRUPTED, EXIT_USAGE, cli, main
from ronan_jax.cli.audit import summary_paragraph

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "cli", "main", "summary_paragraph"]
