"""Every command, under an injected OS or SQLite failure, ends with exit 2 and a one-line
reason: no traceback, no usage text (the user's command was right; the world was not)."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
from e2e_helpers import BATCH, TinyWorld, invoke, write_mixed_folder

from ronan_jax.results.store import ResultStore, StoreError


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def done(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, a finished results database)."""
    root = tmp_path_factory.mktemp("exit-codes")
    folder = write_mixed_folder(world, root / "images", n=2)
    db = root / "r.sqlite"
    args = ["audit", folder, "--model", world.model, "--profile", world.profile, "--db", db,
            "--batch-size", BATCH, "--quiet"]
    assert invoke(args).exit_code == 0
    return folder, db


def audit_args(world, folder, db):
    return ["audit", folder, "--model", world.model, "--profile", world.profile, "--db", db,
            "--batch-size", BATCH, "--quiet"]


CASES = {
    # command: (what fails, how it is injected)
    "audit: the database is full": ("audit", ResultStore, "write_batch",
                                    StoreError("writing a batch (r.sqlite): database or disk is full")),
    "audit: SQLite itself fails": ("audit", ResultStore, "start_run",
                                   sqlite3.OperationalError("disk I/O error")),
    "audit: telemetry cannot be written": ("audit", ResultStore, "write_telemetry",
                                           StoreError("telemetry (r.sqlite): database or disk is full")),
    "report: the disk is full": ("report", os, "fdopen", None),
    "export: the disk is full": ("export", "ronan_jax.cli.results", "open", None),
    "merge: the target is full": ("merge", ResultStore, "copy_from",
                                  StoreError("merging (m.sqlite): database or disk is full")),
    "profile: the disk is full": ("profile", Path, "touch", None),
    "convert: the disk is full": ("convert", Path, "write_text", None),
    "demo: the disk is full": ("demo", Path, "mkdir", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_injected_failure_is_a_one_line_exit_2(case, world, done, tmp_path, monkeypatch):
    command, owner, name, error = CASES[case]
    folder, db = done

    def fail(*args, **kwargs):
        if error is None:
            enospc()
        raise error

    args = {
        "audit": audit_args(world, folder, tmp_path / "r.sqlite"),
        "report": ["report", db, "-o", tmp_path / "r.html"],
        "export": ["export", db, "-o", tmp_path / "r.csv"],
        "merge": ["merge", tmp_path / "m.sqlite", db],
        "profile": ["profile", "--model", world.model, "--reference", "none", "--samples", 3,
                    "--steps", 2, "--restarts", 1, "-o", tmp_path / "p.json", "--quiet"],
        "convert": ["convert", save_torch_dcgan(tmp_path), "-o", tmp_path / "converted"],
        "demo": ["demo", "-o", tmp_path / "demo", "--n", 1, "--quiet", "--profile", world.profile],
    }[command]
    if isinstance(owner, str):  # a name the command's module looks up (``open``)
        import importlib

        monkeypatch.setattr(importlib.import_module(owner), name, fail, raising=False)
    else:
        monkeypatch.setattr(owner, name, fail)
    result = invoke(args)
    assert result.exit_code == 2, result.output
    text = result.output
    assert "Traceback" not in text and "Usage:" not in text
    assert "No space left on device" in text or "disk" in text
    assert len([line for line in text.splitlines() if line.startswith("Error:")]) == 1


def save_torch_dcgan(tmp_path: Path) -> Path:
    """A real pytorch/examples-style DCGAN state dict to convert."""
    torch = pytest.importorskip("torch")
    from torch import nn

    net = nn.Sequential(
        nn.ConvTranspose2d(8, 16, 4, 1, 0, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
        nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(True),
        nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(True),
        nn.ConvTranspose2d(4, 1, 4, 2, 1, bias=False), nn.Tanh(),
    )
    path = tmp_path / "netG.pth"
    torch.save({f"main.{k}": v for k, v in net.state_dict().items()}, path)
    return path

