"""End-to-end tests of the `ronan` CLI on tiny models (CliRunner, in-process)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (
    BAD_KINDS,
    BATCH,
    HW,
    REPO,
    RESTARTS,
    STEPS,
    TinyWorld,
    bad_files,
    db_rows,
    invoke,
    make_tar,
    png_bytes,
    write_png,
)

MARKUP_NAME = "<img src=x onerror=alert(1)>.png"


@pytest.fixture(scope="module")
def data(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs of every kind: good images, one bad file of each kind, a tar shard, a list."""
    root = tmp_path_factory.mktemp("data")
    for i in range(6):
        write_png(root / "good" / "belonging" / f"b-{i:02d}.png", world.belonging[i])
        write_png(root / "good" / "noise" / f"n-{i:02d}.png", world.non_belonging[i])
    write_png(root / "good" / "markup" / MARKUP_NAME, world.belonging[9])
    bad_files(root / "bad")
    members = {f"shard/b-{i:02d}.png": png_bytes(world.belonging[i]) for i in range(6, 9)}
    members.update({f"shard/n-{i:02d}.png": png_bytes(world.non_belonging[i]) for i in range(6, 9)})
    members["shard/meta.json"] = b'{"not": "an image"}'
    members["shard/empty.png"] = b""
    make_tar(root / "shard.tar", members)
    (root / "list.txt").write_text(
        "# inputs of a list file\ngood/belonging/b-00.png\n\ngood/noise\nnope/missing.png\n"
    )
    return root


def audit_args(world: TinyWorld, db: Path, *inputs: object, extra: tuple = ()) -> list:
    return ["audit", *inputs, "--model", world.model, "--profile", world.profile,
            "--db", db, "--batch-size", BATCH, "--quiet", *extra]


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["member"] or r["path"]).name: r for r in rows}


@pytest.fixture(scope="module")
def audited(world: TinyWorld, data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The directory audit every later test reads: good + bad folders and a missing file."""
    db = tmp_path_factory.mktemp("audit") / "results.sqlite"
    args = audit_args(world, db, data / "good", data / "bad", data / "missing.png",
                      extra=("--keep-evidence",))
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return db, args, result.output


def test_directory_audit_judges_good_images_and_records_every_bad_kind(audited, data):
    db, _, output = audited
    rows = by_name(db_rows(db))
    expected_errors = {**BAD_KINDS, "missing.png": "not-found"}
    assert len(rows) == 13 + len(expected_errors)
    for name, kind in expected_errors.items():
        assert rows[name]["verdict"] == "error", name
        assert rows[name]["error_kind"] == kind, (name, rows[name]["error"])
        assert rows[name]["error"]
    good = {n: r for n, r in rows.items() if n not in expected_errors}
    assert all(r["verdict"] in ("belonging", "non-belonging") for r in good.values())
    assert all(np.isfinite(r["z"]) and r["ref_loss"] > 0 and r["sha256"] for r in good.values())
    own = [r["verdict"] for n, r in good.items() if n.startswith("b-")]
    noise = [r["verdict"] for n, r in good.items() if n.startswith("n-")]
    assert own.count("belonging") >= 5 and noise.count("non-belonging") == 6
    # The one-paragraph summary counts what the database holds.
    counts = Counter(r["verdict"] for r in rows.values())
    assert (
        f"{counts['belonging']} belonging, {counts['non-belonging']} non-belonging, "
        f"{counts['error']} errors" in " ".join(output.split())
    )
    assert "Audited 18 images" in output


def test_evidence_is_kept_per_image(audited):
    db, _, _ = audited
    judged = [r for r in db_rows(db) if r["verdict"] != "error"]
    for row in judged:
        with np.load(row["evidence_path"]) as npz:
            assert {"image", "reconstruction", "ref_reconstruction", "best_input"} <= set(npz.files)
            assert npz["image"].shape == npz["reconstruction"].shape == (HW, HW, 1)
        assert Path(row["evidence_path"]).stem == row["sha256"]


def test_rerun_resumes_skips_done_and_retries_errors(audited, world):
    db, args, _ = audited
    before = {(r["path"], r["member"]): r for r in db_rows(db)}
    result = invoke(args)
    assert result.exit_code == 0, result.output
    after = {(r["path"], r["member"]): r for r in db_rows(db)}
    assert after.keys() == before.keys()  # no duplicates
    assert "13 inputs already done were skipped" in " ".join(result.output.split())
    assert "Audited 5 images" in result.output  # the error rows are retried
    for key, row in after.items():
        assert row["verdict"] == before[key]["verdict"]
        if row["verdict"] != "error":
            assert row["run_id"] == before[key]["run_id"]  # not redone


def test_glob_input(world, data, tmp_path):
    db = tmp_path / "glob.sqlite"
    result = invoke(audit_args(world, db, str(data / "good" / "*" / "b-*.png")))
    assert result.exit_code == 0, result.output
    rows = db_rows(db)
    assert sorted(Path(r["path"]).name for r in rows) == [f"b-{i:02d}.png" for i in range(6)]


def test_tar_stream_input(world, data, tmp_path):
    db = tmp_path / "tar.sqlite"
    result = invoke(audit_args(world, db, data / "shard.tar"))
    assert result.exit_code == 0, result.output
    rows = db_rows(db)
    assert {r["path"] for r in rows} == {str(data / "shard.tar")}
    members = {r["member"]: r for r in rows}
    assert "shard/meta.json" not in members
    assert len(members) == 7
    assert members["shard/empty.png"]["error_kind"] == "empty"
    assert all(members[f"shard/n-{i:02d}.png"]["verdict"] == "non-belonging" for i in range(6, 9))


def test_list_file_input(world, data, tmp_path):
    db = tmp_path / "list.sqlite"
    result = invoke(audit_args(world, db, data / "list.txt"))
    assert result.exit_code == 0, result.output
    rows = by_name(db_rows(db))
    assert set(rows) == {"b-00.png", "missing.png", *(f"n-{i:02d}.png" for i in range(6))}
    assert rows["missing.png"]["error_kind"] == "not-found"
    assert rows["missing.png"]["path"] == str(data / "nope" / "missing.png")
    assert rows["n-00.png"]["verdict"] == "non-belonging"


def test_resize_flag_records_resized(world, data, tmp_path):
    db = tmp_path / "resize.sqlite"
    result = invoke(audit_args(world, db, data / "bad" / "wrong-size.png",
                               data / "good" / "noise", extra=("--resize",)))
    assert result.exit_code == 0, result.output
    rows = by_name(db_rows(db))
    assert rows["wrong-size.png"]["resized"] is True
    assert rows["wrong-size.png"]["verdict"] != "error"
    assert rows["wrong-size.png"]["width"] == HW + 4
    assert rows["n-01.png"]["resized"] is False


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export(audited, tmp_path, fmt):
    db, _, _ = audited
    out = tmp_path / f"results.{fmt}"
    result = invoke(["export", db, "--format", fmt, "-o", out])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    if fmt == "csv":
        records = list(csv.DictReader(io.StringIO(text)))
    else:
        records = [json.loads(line) for line in text.splitlines()]
    required = {"path", "member", "sha256", "loss", "ref_loss", "calibrated_loss", "z",
                "critical_value", "p_value", "verdict", "error"}
    assert len(records) == len(db_rows(db))
    assert all(required <= set(r) for r in records)
    judged = [r for r in records if r["verdict"] != "error"]
    errors = [r for r in records if r["verdict"] == "error"]
    assert judged and errors
    assert all(float(r["calibrated_loss"]) > 0 and r["sha256"] for r in judged)
    assert all(r["error"] and r["z"] in ("", None) for r in errors)
    # To stdout when no -o is given.
    result = invoke(["export", db, "--format", fmt])
    assert result.output.count("\n") == len(records) + (fmt == "csv")


def test_report_with_labels_escapes_file_names(audited, data, tmp_path):
    db, _, _ = audited
    labels = tmp_path / "labels.csv"
    lines = ["path,label"]
    lines += [f"{data}/good/belonging/b-{i:02d}.png,1" for i in range(6)]
    lines += [f"{data}/good/noise/n-{i:02d}.png\tnon-belonging" for i in range(6)]
    labels.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.html"
    result = invoke(["report", db, "--labels", labels, "-o", out])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    bad = tmp_path / "bad-labels.csv"
    bad.write_text("path,label\nx.png,maybe\n")
    result = invoke(["report", db, "--labels", bad, "-o", out])
    assert result.exit_code == 2 and "maybe" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--steps", STEPS + 1), "steps"),
        (("--metric", "mae"), "metric"),
        (("--restarts", RESTARTS, "--lr", 0.5), "lr"),
        (("--reference", "none"), "calibrated"),
    ],
)
def test_settings_that_differ_from_the_profile_exit_2(world, data, tmp_path, extra, message):
    db = tmp_path / "x.sqlite"
    result = invoke(audit_args(world, db, data / "good", extra=extra))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not db.exists()  # nothing was started


def test_bad_models_and_profiles_exit_2(world, data, tmp_path):
    db = tmp_path / "x.sqlite"
    missing = tmp_path / "no-such-model"
    result = invoke(["audit", data / "good", "--model", missing, "--profile", world.profile, "--db", db])
    assert result.exit_code == 2 and "no such model" in result.output
    not_ckpt = tmp_path / "empty-dir"
    not_ckpt.mkdir()
    result = invoke(["audit", data / "good", "--model", not_ckpt, "--profile", world.profile, "--db", db])
    assert result.exit_code == 2 and "model_card.json" in result.output
    result = invoke(["audit", data / "good", "--model", world.other, "--profile", world.profile, "--db", db])
    assert result.exit_code == 2 and "model weights differ" in result.output
    result = invoke(["audit", data / "good", "--model", world.model, "--profile", tmp_path / "nope.json", "--db", db])
    assert result.exit_code == 2
    result = invoke(["audit", data / "good", "--model", world.model, "--db", db])
    assert result.exit_code == 2 and "needs --profile" in result.output
    result = invoke(["audit", "--model", world.model, "--profile", world.profile])
    assert result.exit_code == 2  # no inputs
    result = invoke(["export", tmp_path / "nope.sqlite"])
    assert result.exit_code == 2


def test_help_texts_name_the_flags():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("zoo", "profile", "audit", "report", "export", "demo"):
        assert command in result.output
    wanted = {
        "audit": ["--model", "--reference", "--profile", "--db", "--batch-size", "--resize",
                  "--keep-evidence", "--steps", "--restarts", "--lr", "--metric", "--seed", "--quiet"],
        "profile": ["--model", "--reference", "--samples", "--steps", "--restarts", "--lr",
                    "--metric", "--seed", "--batch-size", "--out", "--trim-outliers"],
        "report": ["--labels", "--out"],
        "export": ["--format", "--out"],
        "demo": ["--out"],
    }
    for command, flags in wanted.items():
        result = invoke([command, "--help"])
        assert result.exit_code == 0
        for flag in flags:
            assert flag in result.output, (command, flag)


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "ronan_jax.cli", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ronan" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ronan_jax.cli", "audit", "--bogus"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2


# -- builtin models and the demo, on a stand-in zoo of tiny models ---------------------------


@pytest.fixture()
def fake_zoo(world: TinyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Replace ronan_jax.zoo by tiny models: dcgan-mnist (the world's model), vae-mnist
    (another model), tiny-ref (the reference); shipped profiles in a temp folder."""
    import ronan_jax
    import ronan_jax.zoo.demo
    from ronan_jax.models import resolver as models_resolver
    from ronan_jax.models.checkpoint import load_generator, read_card

    paths = {"dcgan-mnist": world.model, "vae-mnist": world.other, "tiny-ref": world.reference}

    def list_models() -> list[dict]:
        return [{"name": n, "installed": True, "output_shape": [HW, HW, 1], "data": "noise",
                 "default_reference": "tiny-ref", "description": f"tiny stand-in for {n}"}
                for n in paths]

    def load(name: str):
        if name not in paths:
            raise ValueError(f"unknown zoo model {name!r}")
        return load_generator(paths[name], name=name)

    def load_samples() -> dict[str, np.ndarray]:
        return {"mnist_unseen": np.random.default_rng(5).random((100, HW, HW, 1)).astype(np.float32)}

    fake = types.ModuleType("ronan_jax.zoo")
    fake.DEFAULT_MODEL = "dcgan-mnist"
    fake.list_models = list_models
    fake.load = load
    fake.load_samples = load_samples
    fake.default_reference = lambda name: "tiny-ref"
    fake.card = lambda name: read_card(paths[name])
    monkeypatch.setitem(sys.modules, "ronan_jax.zoo", fake)
    monkeypatch.setattr(ronan_jax, "zoo", fake, raising=False)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setattr(models_resolver, "_PROFILES_DIR", profiles)
    # A profile that did not record its reference's spec: the zoo's default must be used.
    data = json.loads(world.profile.read_text())
    data["model"].pop("spec")
    data["reference"].pop("spec")
    from ronan_jax.attribution.profile_integrity import digest

    data["digest"] = digest(data)  # an edit made by the profile's owner: sealed again
    (profiles / "dcgan-mnist.json").write_text(json.dumps(data))
    return profiles


def test_zoo_commands_and_builtin_models(fake_zoo, data, tmp_path):
    result = invoke(["zoo"])
    assert result.exit_code == 0 and "dcgan-mnist" in result.output and "vae-mnist" in result.output
    result = invoke(["zoo", "show", "dcgan-mnist"])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["model"]["name"] == "dcgan-mnist" and shown["profile"]["n"] > 0
    assert invoke(["zoo", "show", "nope"]).exit_code == 2
    # builtin:NAME with its shipped profile and documented default reference.
    db = tmp_path / "builtin.sqlite"
    result = invoke(["audit", data / "good" / "noise", "--model", "builtin:dcgan-mnist",
                     "--db", db, "--quiet"])
    assert result.exit_code == 0, result.output
    assert {r["verdict"] for r in db_rows(db)} == {"non-belonging"}
    result = invoke(["audit", data / "good", "--model", "builtin:vae-mnist", "--db", db])
    assert result.exit_code == 2 and "no profile is shipped" in result.output
    result = invoke(["audit", data / "good", "--model", "dcgan-mnist", "--db", db])
    assert result.exit_code == 2 and "builtin:dcgan-mnist" in result.output


def test_demo_runs_end_to_end(fake_zoo, world, tmp_path):
    shutil.copy(world.profile, fake_zoo / "dcgan-mnist-demo.json")
    out = tmp_path / "demo"
    result = invoke(["demo", "-o", out, "--n", 2, "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dcgan-mnist-demo.json" in text and f"{STEPS} steps x {RESTARTS} restarts" in text
    for cell in ("TP", "FP", "FN", "TN", "Accuracy"):
        assert cell in text
    assert (out / "report.html").is_file() and (out / "labels.csv").is_file()
    rows = db_rows(out / "demo.sqlite")
    assert len(rows) == 6 and all(r["verdict"] != "error" for r in rows)
    folders = Counter(Path(r["path"]).parent.name for r in rows)
    assert folders == {"generated-dcgan-mnist": 2, "real-mnist-unseen": 2, "generated-vae-mnist": 2}
    real = [r for r in rows if "real-mnist" in r["path"]]
    assert all(r["verdict"] == "non-belonging" for r in real)  # noise stands in for digits


def test_audit_warns_when_the_profile_holds_a_failed_inversion(world, data, tmp_path, audited):
    from ronan_jax.attribution.profile import belonging_stats
    from ronan_jax.attribution.profile_integrity import digest

    assert "Warning:" not in audited[2]  # the tiny world's own profile is sound
    prof = json.loads(Path(world.profile).read_text())
    cal = prof["calibrated_losses"] + [50.0 * max(prof["calibrated_losses"])]
    mu, sigma, n, _ = belonging_stats(np.array(cal))
    prof.update(calibrated_losses=cal, losses=prof["losses"] + [1.0], mu=mu, sigma=sigma, n=n)
    if prof.get("ref_losses") is not None:
        prof["ref_losses"] = prof["ref_losses"] + [1.0 / cal[-1]]
    failed = tmp_path / "failed.json"
    prof["digest"] = digest(prof)
    failed.write_text(json.dumps(prof))
    args = audit_args(world, tmp_path / "w.sqlite", data / "good" / "belonging")
    args[args.index("--profile") + 1] = failed
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "Warning: 1 of this profile's" in result.output
    assert f"{cal[-1]:.3g}" in result.output and "--trim-outliers" in result.output
