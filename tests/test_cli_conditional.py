"""Class-conditional models from the command line: profile and audit with a fixed class, a
classes file, and the class unknown (minimum over classes); the class is stored per row."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from e2e_helpers import db_rows, invoke, write_png

from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.models import dcgan
from ronan_jax.models.checkpoint import save_generator

C, STEPS, RESTARTS, N = 3, 60, 2, 6
FLAGS = ["--steps", STEPS, "--restarts", RESTARTS, "--samples", N, "--quiet"]


def native_model(root: Path) -> Path:
    """A tiny conditional DCGAN written by ronan-jax itself (16x16, random weights)."""
    cfg = dcgan.DCGANConfig(nz=8, ngf=4, nc=1, depth=3, batchnorm=False, num_classes=C)
    variables = dcgan.random_variables(cfg, jax.random.key(0), batch=64)
    save_generator(root / "cgan", "dcgan", dataclasses.asdict(cfg), variables, {"name": "cgan"})
    return root / "cgan"


def torch_model(root: Path) -> Path:
    """A tiny conditional DCGAN saved by PyTorch (one-hot class concatenated to the noise,
    random weights, 32x32), converted with `ronan convert --num-classes`."""
    torch = pytest.importorskip("torch")
    from test_converters_dcgan import make_torch_dcgan

    net = make_torch_dcgan(seed=3, nz=8, ngf=8, nc=1, depth=4, num_classes=C)
    torch.save(net.state_dict(), root / "netG.pth")
    res = invoke(["convert", root / "netG.pth", "-o", root / "cgan", "--num-classes", C])
    assert res.exit_code == 0, res.output
    return root / "cgan"


def unet_model(root: Path) -> Path:
    """A tiny class-conditional diffusers UNet2DModel (random weights, 8x8 greyscale) saved
    as a one-step consistency-model pipeline, converted with `ronan convert` and no class:
    the converted model takes each image's class."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False, num_class_embeds=C,
    ).eval()
    with torch.no_grad():  # perturb every weight: no default initialisation hides a mistake
        for p in unet.parameters():
            spread = p.std() if p.numel() > 1 and p.std() > 0 else torch.tensor(0.1)
            p.add_(0.3 * spread * torch.randn_like(p))
    scheduler = diffusers.CMStochasticIterativeScheduler()
    diffusers.ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "cm")
    res = invoke(["convert", root / "cm", "-o", root / "cunet"])
    assert res.exit_code == 0, res.output
    return root / "cunet"


MODELS = {"native": native_model, "converted-from-pytorch": torch_model}


@pytest.fixture(scope="module", params=list(MODELS))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from ronan_jax.models.checkpoint import load_generator

    root = tmp_path_factory.mktemp("conditional")
    model = MODELS[request.param](root)
    gen = load_generator(model)
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    write_class_images(root / "images", gen, classes)
    (root / "classes.csv").write_text(
        "path,class\n" + "".join(f"images/class{k}-{i}.png,{k}\n" for i, k in enumerate(classes[:-1]))
    )  # the last image is not listed
    known = root / "known.json"
    assert invoke(["profile", "--model", model, "--reference", "none", "-o", known, *FLAGS]).exit_code == 0
    unknown = root / "unknown.json"
    res = invoke(["profile", "--model", model, "--reference", "none", "--class-rule", "min",
                  "-o", unknown, *FLAGS])
    assert res.exit_code == 0, res.output
    return {"root": root, "model": model, "known": known, "unknown": unknown, "classes": classes}


def write_class_images(folder: Path, gen, classes: np.ndarray) -> None:
    """Images the model drew, image ``i`` from class ``classes[i]``, as classK-i.png."""
    z = gen.sample_inputs(jax.random.key(7), len(classes))
    images = quantize_8bit(np.asarray(gen.apply_fn(gen.params, z, gen.conditions_for_classes(classes))))
    for i, (img, k) in enumerate(zip(images, classes, strict=True)):
        write_png(folder / f"class{k}-{i}.png", img)


@pytest.mark.slow  # ~4 min on 2 cores, nearly all XLA compiling the UNet's Adam steps
def test_a_class_conditional_diffusers_unet_from_the_command_line(tmp_path):
    """Converted without a class, a class-conditional consistency UNet profiles and audits
    with a fixed class, a classes file and the class unknown; images drawn from class k win
    with class k. One profile size and one audit size, so each rule compiles once."""
    from ronan_jax.models.checkpoint import load_generator

    model = unet_model(tmp_path)
    gen = load_generator(model)
    assert gen.num_classes == C
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    write_class_images(tmp_path / "images", gen, classes)
    (tmp_path / "classes.csv").write_text(
        "path,class\n" + "".join(f"images/class{k}-{i}.png,{k}\n" for i, k in enumerate(classes)))
    flags = ["--steps", 50, "--restarts", 2, "--samples", len(classes), "--quiet"]
    world = {"root": tmp_path, "model": model}
    for name, rule in (("known", "known"), ("unknown", "min")):
        res = invoke(["profile", "--model", model, "--reference", "none", "--class-rule", rule,
                      "-o", tmp_path / f"{name}.json", *flags])
        assert res.exit_code == 0, res.output
    code, out, rows = audit(world, tmp_path / "fixed.sqlite", tmp_path / "known.json", "--class", 1)
    assert code == 0, out
    assert {r["class_label"] for r in rows} == {1} and len(rows) == len(classes)
    fixed = by_name(rows)
    code, out, rows = audit(world, tmp_path / "file.sqlite", tmp_path / "known.json",
                            "--classes-from", tmp_path / "classes.csv")
    assert code == 0, out
    own = by_name(rows)
    assert all(r["class_label"] == int(n[5]) for n, r in own.items())
    # each class-1 image got the same inversion in both audits; the others mostly fit
    # better with their own class than with class 1
    assert all(own[n]["loss"] == fixed[n]["loss"] for n in own if n[5] == "1")
    assert sum(own[n]["loss"] < fixed[n]["loss"] for n in own if n[5] != "1") >= 4
    code, out, rows = audit(world, tmp_path / "min.sqlite", tmp_path / "unknown.json")
    assert code == 0, out
    assert "minimum over 3 classes" in " ".join(out.split())
    won = {name: row["class_label"] for name, row in by_name(rows).items()}
    assert sum(won[name] == int(name[5]) for name in won) >= 6, won  # chance: 3 of 9


def audit(world, db: Path, profile: Path, *extra) -> tuple[int, str, list[dict]]:
    res = invoke(["audit", world["root"] / "images", "--model", world["model"], "--reference",
                  "none", "--profile", profile, "--db", db, "--quiet", *extra])
    return res.exit_code, res.output, db_rows(db) if db.exists() else []


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in rows}


def test_profiles_record_the_drawn_classes_and_the_rule(world):
    import json

    known, unknown = (json.loads(Path(world[k]).read_text()) for k in ("known", "unknown"))
    assert len(known["classes"]) == N and set(known["classes"]) <= set(range(C))
    assert "class_rule" not in known["config"] and unknown["config"]["class_rule"] == "min"


def test_a_fixed_class_is_used_for_every_image_and_stored(world, tmp_path):
    code, out, rows = audit(world, tmp_path / "fixed.sqlite", world["known"], "--class", 2)
    assert code == 0, out
    assert len(rows) == 9 and {r["class_label"] for r in rows} == {2}


def test_a_classes_file_gives_each_image_its_class_and_unlisted_ones_are_named(world, tmp_path):
    code, out, rows = audit(world, tmp_path / "file.sqlite", world["known"],
                            "--classes-from", world["root"] / "classes.csv")
    assert code == 0, out
    rows = by_name(rows)
    for name, row in rows.items():
        k = int(name[5])
        if name == "class2-8.png":  # not in the file
            assert row["verdict"] == "error" and row["error_kind"] == "no-class"
        else:
            assert row["class_label"] == k and row["verdict"] in ("belonging", "non-belonging")


def test_the_class_unknown_wins_with_the_generating_class(world, tmp_path):
    code, out, rows = audit(world, tmp_path / "min.sqlite", world["unknown"])
    assert code == 0, out
    assert "minimum over 3 classes" in " ".join(out.split())
    won = {name: row["class_label"] for name, row in by_name(rows).items()}
    right = sum(won[name] == int(name[5]) for name in won)
    assert right >= 6, won  # random weights: most images are told apart (chance: 3 of 9)


@pytest.mark.parametrize(("profile", "extra", "message"), [
    ("known", (), "needs each image's class"),
    ("known", ("--class", 3), "outside [0, 3)"),
    ("unknown", ("--class", 1), "takes no class"),
    ("known", ("--class-rule", "min"), "class_rule"),
])
def test_a_missing_or_impossible_class_is_a_one_line_usage_error(world, tmp_path, profile, extra, message):
    code, out, rows = audit(world, tmp_path / "bad.sqlite", world[profile], *extra)
    assert code == 2, out
    assert message in " ".join(out.split()) and "Traceback" not in out
    assert rows == []


def test_the_report_shows_the_class_each_image_was_judged_with(world, tmp_path):
    db = tmp_path / "r.sqlite"
    code, out, _ = audit(world, db, world["known"], "--class", 1)
    assert code == 0, out
    res = invoke(["report", db, "-o", tmp_path / "r.html"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert '<tr><th>class</th><td class="num">1</td>' in html
