"""Interrupting `python -m ronan_jax.cli audit`: SIGKILL loses at most the batch in flight and
a re-run completes to exactly the rows of an uninterrupted run; Ctrl-C (SIGINT) commits the
current batch and exits 130."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (
    BATCH,
    TinyWorld,
    count_rows,
    db_rows,
    invoke,
    start_cli,
    subprocess_env,
    wait_for_rows,
    write_png,
)

N_IMAGES = 48  # 6 batches of BATCH


@pytest.fixture(scope="module")
def images(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume-images")
    for i in range(N_IMAGES // 2):
        write_png(root / f"b-{i:02d}.png", world.belonging[i])
        write_png(root / f"n-{i:02d}.png", world.non_belonging[i])
    return root


def args(world: TinyWorld, images: Path, db: Path) -> list:
    # SLOW_STEPS: each batch takes a noticeable time, so the run can be caught mid-way.
    return ["audit", images, "--model", world.model, "--profile", world.slow_profile,
            "--db", db, "--batch-size", BATCH, "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted(world: TinyWorld, images: Path, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("baseline") / "baseline.sqlite"
    result = invoke(args(world, images, db))
    assert result.exit_code == 0, result.output
    rows = db_rows(db)
    assert len(rows) == N_IMAGES
    return {(r["path"], r["member"]): r for r in rows}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return subprocess_env(tmp_path_factory.mktemp("jax-cache"))


def assert_same_results(db: Path, baseline: dict) -> None:
    rows = db_rows(db)
    keys = [(r["path"], r["member"]) for r in rows]
    assert len(keys) == len(set(keys)) == N_IMAGES  # no duplicates, none missing
    assert set(keys) == set(baseline)
    for row in rows:
        base = baseline[(row["path"], row["member"])]
        assert row["verdict"] == base["verdict"], row["path"]
        assert row["sha256"] == base["sha256"]
        np.testing.assert_allclose(row["calibrated_loss"], base["calibrated_loss"], rtol=1e-4)


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_rows(world, images, uninterrupted, env, tmp_path):
    db = tmp_path / "killed.sqlite"
    proc = start_cli(args(world, images, db), env, tmp_path / "killed.log")
    try:
        seen = wait_for_rows(proc, db, 0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    committed = count_rows(db)
    assert seen <= committed < N_IMAGES, "the run finished before it could be killed"
    assert committed % BATCH == 0  # whole batches only
    result = invoke(args(world, images, db))
    assert result.exit_code == 0, result.output
    assert f"{committed} inputs already done were skipped" in " ".join(result.output.split())
    assert_same_results(db, uninterrupted)


def test_ctrl_c_commits_the_current_batch_and_exits_130(world, images, uninterrupted, env, tmp_path):
    db = tmp_path / "interrupted.sqlite"
    log = tmp_path / "interrupted.log"
    proc = start_cli(args(world, images, db), env, log)
    try:
        wait_for_rows(proc, db, 0)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = " ".join(log.read_text().split())
    assert rc == 130, output
    assert "stopping after the current batch" in output and "Stopped early" in output
    committed = count_rows(db)
    assert 0 < committed < N_IMAGES and committed % BATCH == 0
    result = invoke(args(world, images, db))
    assert result.exit_code == 0, result.output
    assert_same_results(db, uninterrupted)
