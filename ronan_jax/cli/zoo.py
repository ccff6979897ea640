"""``ronan zoo``: the built-in models."""

from __future__ import annotations

import json
from typing import Any

import click

from ronan_jax.cli.app import cli, handle_errors, stdout


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
@handle_errors
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
    stdout().print(table)


@zoo.command("show")
@click.argument("name")
@handle_errors
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
