"""Scale out (ronan_jax.engine.mesh): an audit split over 4 local devices, and over 2 processes
started with jax.distributed and merged, gives the rows of a plain single-device run.

Device counts are fixed when JAX starts, so the multi-device runs are subprocesses with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (CPU devices). Everything is tiny
(16x16 DCGANs, 20 steps, 2 restarts) so the module runs in about a minute on a busy CPU.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_helpers import (
    HW,
    REPO,
    db_rows,
    invoke,
    save_tiny_dcgan,
    start_cli,
    subprocess_env,
    write_png,
)

from ronan_jax.audit.shards import ProcessSettings, ProcessShard, initialize_processes, shard_index
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.mesh import round_up

STEPS, RESTARTS, SAMPLES, BATCH = 20, 2, 8, 8
N_EACH = 7  # 7 generated + 7 noise images + 1 unreadable file: 15 inputs, batches of 8 and 7
# Losses agree to float32 rounding (~1e-7 relative: a per-image reduction may be summed in
# another order when the per-device batch shape differs); z = (loss - mu) / sigma magnifies
# that relative error where the loss is close to mu, so z and p get absolute tolerances.
FLOAT_FIELDS = {  # field: (rtol, atol)
    "loss": (1e-6, 0.0),
    "ref_loss": (1e-6, 0.0),
    "calibrated_loss": (1e-6, 0.0),
    "z": (1e-6, 1e-5),
    "critical_value": (1e-12, 0.0),
    "p_value": (1e-5, 1e-9),
}
EXACT_FIELDS = ("path", "member", "sha256", "verdict", "error_kind", "width", "height", "mode", "config_key")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model, reference and calibrated profile (20 steps x 2 restarts), and a folder
    of generated images, noise and one file that is not an image."""
    import jax

    from ronan_jax.attribution.profile import quantize_8bit
    from ronan_jax.models.checkpoint import load_generator

    root = tmp_path_factory.mktemp("scale")
    model = save_tiny_dcgan(root / "model", 0, "tiny-model")
    reference = save_tiny_dcgan(root / "reference", 1, "tiny-reference")
    profile = root / "profile.json"
    result = invoke(
        ["profile", "--model", model, "--reference", reference, "--samples", SAMPLES,
         "--steps", STEPS, "--restarts", RESTARTS, "--seed", 0, "-o", profile, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    images = root / "images"
    own = quantize_8bit(np.asarray(load_generator(model).generate(jax.random.key(5), N_EACH)))
    noise = np.random.default_rng(6).random((N_EACH, HW, HW, 1))
    for i in range(N_EACH):
        write_png(images / f"own-{i}.png", own[i])
        write_png(images / f"noise-{i}.png", noise[i])
    (images / "broken.png").write_bytes(b"not an image\n")
    return {"root": root, "model": model, "reference": reference, "profile": profile,
            "images": images, "cache": root / "jax-cache"}


def audit_args(setup: dict[str, Path], db: Path, *extra: Any) -> list[Any]:
    return ["audit", setup["images"], "--model", setup["model"], "--profile", setup["profile"],
            "--db", db, "--batch-size", BATCH, "--quiet", *extra]


@pytest.fixture(scope="module")
def baseline(setup: dict[str, Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """The plain run: this pytest process, one CPU device."""
    db = setup["root"] / "baseline.sqlite"
    result = invoke(audit_args(setup, db))
    assert result.exit_code == 0, result.output
    rows = db_rows(db)
    assert len(rows) == 2 * N_EACH + 1
    verdicts = {Path(r["path"]).name: r["verdict"] for r in rows}
    assert verdicts["broken.png"] == "error"
    assert all(verdicts[f"own-{i}.png"] == "belonging" for i in range(N_EACH))
    assert all(verdicts[f"noise-{i}.png"] == "non-belonging" for i in range(N_EACH))
    return {(r["path"], r["member"]): r for r in rows}


def assert_same_rows(rows: list[dict[str, Any]], expected: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Same images, verdicts, hashes and errors exactly; numbers to :data:`FLOAT_FIELDS`'s
    tolerances; timings, run ids and evidence paths are not compared."""
    keys = sorted((r["path"], r["member"]) for r in rows)
    assert keys == sorted(expected)
    for row in rows:
        want = expected[(row["path"], row["member"])]
        for field in EXACT_FIELDS:
            assert row[field] == want[field], (row["path"], field)
        for field, (rtol, atol) in FLOAT_FIELDS.items():
            if want[field] is None:
                assert row[field] is None, (row["path"], field)
            else:
                np.testing.assert_allclose(
                    row[field], want[field], rtol=rtol, atol=atol, err_msg=f"{row['path']} {field}"
                )


# -- data parallelism over 4 local CPU devices ----------------------------------------------

DEVICES_SCRIPT = r"""
import json, sys
import jax, numpy as np
assert jax.local_device_count() == 4, jax.local_devices()
import ronan_jax.engine.invert as inv
from ronan_jax.models.checkpoint import load_generator
from ronan_jax.cli import main
from ronan_jax.engine.config import InversionConfig

# Record how the engine places arrays: the leading axis must be split over the 4 devices.
split = []
def recording(tree, mesh, _orig=inv.shard_rows):
    out = _orig(tree, mesh)
    for leaf in jax.tree_util.tree_leaves(out):
        if np.ndim(leaf):
            split.append([len(leaf.sharding.device_set), leaf.shape[0], leaf.addressable_shards[0].data.shape[0]])
    return out
inv.shard_rows = recording

common, db1, db4, model = json.loads(sys.argv[1])
assert main([*common, "--db", db1, "--devices", "1"]) == 0
assert not split, "one device must not place anything"
assert main([*common, "--db", db4]) == 0  # default: all 4 devices

# The engine directly, with early stopping (run tables are compacted and re-padded to 4).
gen = load_generator(model)
own = np.round(np.asarray(gen.generate(jax.random.key(1), 3)) * 255) / 255
noise = np.random.default_rng(0).random((2, *gen.output_shape))
images = np.concatenate([own, noise]).astype(np.float32)  # 5 images x 3 restarts = 15 runs
diffs = {}
for name, extra in {"plain": {}, "halving": {"halving_at": (0.5,), "check_every": 5},
                    "plateau": {"plateau_window": 5, "check_every": 5, "plateau_rtol": 0.05}}.items():
    cfg = InversionConfig(steps=20, restarts=3, unroll=5, **extra)
    one = inv.invert(gen, images, cfg.replace(devices=1))
    four = inv.invert(gen, images, cfg)
    stop = np.full(5, float(np.median(one.loss)))
    one_s = inv.invert(gen, images, cfg.replace(devices=1), stop_below=stop)
    four_s = inv.invert(gen, images, cfg, stop_below=stop)
    for tag, a, b in ((name, one, four), (name + "+stop_below", one_s, four_s)):
        diffs[tag] = {
            "loss_rel": float(np.max(np.abs(a.loss - b.loss) / a.loss)),
            "restart_best_rel": float(np.max(np.abs(a.restart_best - b.restart_best) / a.restart_best)),
            "best_input_abs": float(np.max(np.abs(a.best_input - b.best_input))),
            "steps_run_equal": bool(np.array_equal(a.steps_run, b.steps_run)),
            "shapes_equal": all(np.shape(x) == np.shape(y) for x, y in zip(a, b)),
        }
print("RESULT " + json.dumps({"split": split, "diffs": diffs}))
"""


def test_four_local_devices_give_the_rows_of_one(setup, baseline):
    root = setup["root"]
    db1, db4 = root / "devices-1.sqlite", root / "devices-4.sqlite"
    common = [str(a) for a in audit_args(setup, root / "unused.sqlite")]
    common = common[: common.index("--db")] + common[common.index("--db") + 2 :]
    env = subprocess_env(setup["cache"])
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    proc = subprocess.run(
        [sys.executable, "-c", DEVICES_SCRIPT, json.dumps([common, str(db1), str(db4), str(setup["model"])])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = json.loads(proc.stdout.split("RESULT ", 1)[1])

    # Every array the engine placed was split over the 4 devices, a quarter each.
    assert found["split"]
    for n_devices, rows, per_device in found["split"]:
        assert n_devices == 4 and rows % 4 == 0 and per_device == rows // 4

    one = db_rows(db1)
    assert_same_rows(one, baseline)  # --devices 1 in a 4-device process: the plain run
    assert_same_rows(db_rows(db4), {(r["path"], r["member"]): r for r in one})

    for tag, d in found["diffs"].items():
        assert d["shapes_equal"] and d["steps_run_equal"], tag  # padding never returned
        assert d["loss_rel"] < 1e-6 and d["restart_best_rel"] < 1e-6, (tag, d)
        assert d["best_input_abs"] < 1e-5, (tag, d)


def test_devices_beyond_the_process_s_are_a_usage_error(setup, tmp_path):
    result = invoke(audit_args(setup, tmp_path / "x.sqlite", "--devices", 64))
    assert result.exit_code == 2
    assert "64 devices requested, but this process has 1" in result.output
    assert not (tmp_path / "x.sqlite").exists()
    with pytest.raises(ValueError, match="devices must be >= 0"):
        InversionConfig(devices=-1)
    assert InversionConfig(devices=2).result_settings() == InversionConfig().result_settings()


# -- many processes: jax.distributed on loopback, one database each, then `ronan merge` ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_then_merge_give_the_rows_of_one(setup, baseline, tmp_path):
    db = tmp_path / "results.sqlite"
    env = subprocess_env(setup["cache"])
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # 2 local devices each
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        start_cli(audit_args(setup, db, "--coordinator", coordinator, "--num-processes", 2,
                             "--process-id", i), env, tmp_path / f"process-{i}.log")
        for i in range(2)
    ]
    try:
        codes = [p.wait(600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"process-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)

    shards = [tmp_path / f"results.shard-{i}-of-2.sqlite" for i in range(2)]
    assert not db.exists()
    parts = [db_rows(s) for s in shards]
    for i, rows in enumerate(parts):
        assert rows, f"shard {i} is empty"
        assert all(shard_index(r["path"], r["member"], 2) == i for r in rows)
    assert sum(len(rows) for rows in parts) == len(baseline)  # disjoint shares of all inputs

    merged = tmp_path / "merged.sqlite"
    partial = invoke(["merge", merged, shards[0]])
    assert partial.exit_code == 0, partial.output
    assert "no run of process 1 of 2" in partial.output
    result = invoke(["merge", merged, *shards])
    assert result.exit_code == 0, result.output
    assert f"Merged {len(baseline)} rows from 2 databases" in result.output
    assert "Warning" not in result.output
    assert_same_rows(db_rows(merged), baseline)

    exported = invoke(["export", merged, "--format", "jsonl"])
    assert exported.exit_code == 0
    records = [json.loads(line) for line in exported.output.splitlines() if line.startswith("{")]
    assert sorted(r["path"] for r in records) == sorted(p for p, _ in baseline)


def test_merge_refuses_databases_of_different_settings(setup, tmp_path):
    folder = tmp_path / "two"
    for name in ("own-0.png", "noise-0.png"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes((setup["images"] / name).read_bytes())
    dbs = []
    for extra in ((), ("--resize",)):  # resize changes what is compared: another results key
        db = tmp_path / f"{'resize' if extra else 'plain'}.sqlite"
        args = ["audit", folder, "--model", setup["model"], "--profile", setup["profile"],
                "--db", db, "--quiet", *extra]
        result = invoke(args)
        assert result.exit_code == 0, result.output
        dbs.append(db)
    out = tmp_path / "merged.sqlite"
    result = invoke(["merge", out, *dbs])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "different configurations" in message
    assert "resize (plain.sqlite: false, resize.sqlite: true)" in message
    assert not out.exists()


# -- pieces -----------------------------------------------------------------------------------


def test_process_shares_partition_the_inputs_and_name_their_databases():
    keys = [(f"/data/img-{i}.png", "") for i in range(200)] + [("/data/a.tar", f"m{i}") for i in range(50)]
    shards = [ProcessShard(i, 3) for i in range(3)]
    owners = [[s.index for s in shards if s.owns(p, m)] for p, m in keys]
    assert all(len(o) == 1 for o in owners)  # every input has exactly one owner
    sizes = np.bincount([o[0] for o in owners], minlength=3)
    assert sizes.min() > 50  # roughly balanced (250 inputs)
    assert ProcessShard().owns("/anything") and ProcessShard().db_path("r.db") == "r.db"
    assert ProcessShard(0, 2).db_path("out/results.db") == str(Path("out/results.shard-0-of-2.db"))
    assert ProcessShard(1, 4).db_path("r-{process_id}-{num_processes}.sqlite") == "r-1-4.sqlite"
    with pytest.raises(ValueError):
        ProcessShard(2, 2)
    assert initialize_processes(ProcessSettings()) == ProcessShard()
    assert initialize_processes(ProcessSettings(num_processes=3, process_id=2)) == ProcessShard(2, 3)
    with pytest.raises(ValueError, match="both"):
        initialize_processes(ProcessSettings(num_processes=3))
    assert [round_up(n, 4) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]


def test_independent_workers_share_an_audit_without_a_coordinator(setup, baseline, tmp_path):
    """--num-processes/--process-id without --coordinator: fixed shares, no jax.distributed."""
    db = tmp_path / "w.sqlite"
    for i in range(2):
        result = invoke(audit_args(setup, db, "--num-processes", 2, "--process-id", i))
        assert result.exit_code == 0, result.output
    merged = tmp_path / "merged.sqlite"
    shards = [tmp_path / f"w.shard-{i}-of-2.sqlite" for i in range(2)]
    assert invoke(["merge", merged, *shards]).exit_code == 0
    assert_same_rows(db_rows(merged), baseline)
