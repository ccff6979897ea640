"""StyleGAN2 from the command line: `ronan convert` recognises an NVlabs pickle and a
rosinality checkpoint without --format, then `ronan profile` and `ronan audit` run on the
converted models (tiny 16x16 generators, a few steps): class rules zero and min on a
conditional pickle, the w+ space on a rosinality model, and a profile of one space refused
by an audit in another."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from e2e_helpers import db_rows, invoke, write_png

from benchmarks import torch_stylegan2 as ts
from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.models.checkpoint import load_generator

FLAGS = ["--steps", 5, "--restarts", 1, "--reference", "none", "--quiet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sgcli")
    net = ts.randomize(ts.Generator(8, 2, 8, 16, 3, mapping_kwargs=dict(num_layers=2),
                                    synthesis_kwargs=dict(channel_base=64, channel_max=8)), seed=0)
    (root / "network.pkl").write_bytes(ts.network_pickle_bytes({"G_ema": net, "G": net}, "raise SystemExit\n"))
    ros = ts.randomize(ts.RosinalityGenerator(16, 8, 2, channels={4: 8, 8: 8, 16: 4}), seed=1)
    torch.save({"g_ema": ros.state_dict(), "latent_avg": torch.zeros(8)}, root / "stylegan2.pt")
    res = invoke(["convert", root / "network.pkl", "-o", root / "cond"])
    assert res.exit_code == 0 and "Found stylegan-pickle (stylegan2)" in res.output, res.output
    res = invoke(["convert", root / "stylegan2.pt", "-o", root / "ros", "--input-space", "w+"])
    assert res.exit_code == 0 and "Found stylegan-rosinality (stylegan2)" in res.output, res.output
    gen = load_generator(root / "cond")
    z = gen.sample_inputs(jax.random.key(3), 3)
    images = quantize_8bit(np.asarray(gen.apply_fn(gen.params, z, np.array([0, 1, -1], np.int32))))
    for i, img in enumerate(images):
        write_png(root / "images" / f"img{i}.png", img)
    return {"root": root}


def test_a_conditional_pickle_profiles_with_class_rules_zero_and_min_and_audits(models, tmp_path):
    root = models["root"]
    for rule in ("zero", "min"):
        prof = tmp_path / f"{rule}.json"
        res = invoke(["profile", "--model", root / "cond", "--samples", 3, "--class-rule", rule,
                      "-o", prof, *FLAGS])
        assert res.exit_code == 0, res.output
        assert json.loads(prof.read_text())["config"]["class_rule"] == rule
        if rule == "min":
            continue  # profile images are inverted under the rule already; one audit suffices
        db = tmp_path / f"{rule}.sqlite"
        res = invoke(["audit", root / "images", "--model", root / "cond", "--profile", prof,
                      "--db", db, "--reference", "none", "--quiet"])
        assert res.exit_code == 0, res.output
        rows = db_rows(db)
        assert len(rows) == 3 and {r["verdict"] for r in rows} <= {"belonging", "non-belonging"}
        assert {r["class_label"] for r in rows} == {None}  # zero: no class judged with


def test_a_rosinality_model_in_w_plus_profiles_and_audits(models, tmp_path):
    root = models["root"]
    prof = tmp_path / "ros.json"
    res = invoke(["profile", "--model", root / "ros", "--samples", 3, "-o", prof, *FLAGS])
    assert res.exit_code == 0, res.output
    db = tmp_path / "ros.sqlite"
    res = invoke(["audit", root / "images", "--model", root / "ros", "--profile", prof,
                  "--db", db, "--reference", "none", "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(db_rows(db)) == 3
    # The same weights in the z space are another model to a profile: refused (exit 2).
    res = invoke(["convert", root / "stylegan2.pt", "-o", tmp_path / "ros-z"])
    assert res.exit_code == 0, res.output
    res = invoke(["audit", root / "images", "--model", tmp_path / "ros-z", "--profile", prof,
                  "--db", tmp_path / "z.sqlite", "--reference", "none", "--quiet"])
    assert res.exit_code == 2 and "model weights differ" in " ".join(res.output.split())


def test_stylegan_options_are_refused_for_other_formats(tmp_path):
    from test_converters_dcgan import make_torch_dcgan

    torch.save(make_torch_dcgan(seed=0, nz=8, ngf=4, nc=1, depth=4).state_dict(), tmp_path / "netG.pth")
    res = invoke(["convert", tmp_path / "netG.pth", "-o", tmp_path / "out", "--input-space", "w+"])
    assert res.exit_code == 2 and "unknown option(s) input_space" in res.output
