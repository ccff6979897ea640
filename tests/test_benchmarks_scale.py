"""The paper-size speed benchmark's machinery on tiny models of each family (no timing
assertions): both frameworks run the same model, the report has its fields, the arithmetic
of extrapolation, memory and batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import scale  # noqa: E402
from benchmarks import scale_models as sm  # noqa: E402
from benchmarks.speed import Variant  # noqa: E402


@pytest.mark.parametrize("name", sm.MODELS)
def test_torch_and_flax_agree_on_each_tiny_model(name):
    pair = sm.build(name, tiny=True)
    diff, images, classes = sm.max_forward_diff(pair, 2)
    assert diff < scale.ATOL
    assert images.shape == (2, *pair.generator.output_shape)
    assert images.std() > 0.01  # not a constant image
    assert len(classes) == 2 and (pair.num_classes == 0) == np.all(classes == 0)


def test_cm_scalings_are_one_step_from_sigma_max():
    pair = sm.build("cm-imagenet64", tiny=True)
    net = pair.torch_net
    assert net.sigma == pytest.approx(80.0)
    assert float(net.t) == pytest.approx(250.0 * np.log(80.0))  # 1000 * 0.25 * log(sigma)
    assert net.c_in == pytest.approx(1 / np.sqrt(80.0**2 + 0.25))
    assert net.c_skip == pytest.approx(0.25 / ((80.0 - 0.002) ** 2 + 0.25))


def test_paper_configurations():
    cfg = sm.IMAGENET_64_UNET_CONFIG
    assert cfg["block_out_channels"] == [192, 384, 576, 768] and cfg["layers_per_block"] == 3
    assert sm.SD_VAE_CONFIG["block_out_channels"] == [128, 256, 512, 512]
    assert sm.DEFAULT_SIZE == {"stylegan2-cifar10": 32, "cm-imagenet64": 64, "sd-vae": 512}


def test_modes_and_overrides():
    full = scale.parse_args([])
    assert full.mode == "full" and [c.label for c in full.cases] == [
        "stylegan2-cifar10@32", "cm-imagenet64@64", "sd-vae@256", "sd-vae@512"]
    assert full.out.name == "scale-full.json" and full.md.name == "scale-full.md"
    quick = scale.parse_args(["--quick"])
    assert all(c.steps == 1 and c.reps == 1 for c in quick.cases)
    assert {c.model for c in quick.cases} == {"stylegan2-cifar10", "sd-vae"}
    gpu = scale.parse_args(["--gpu"])
    assert all(c.restarts == scale.RESTARTS and "max" in c.batches for c in gpu.cases)
    assert [c.size for c in gpu.cases] == [32, 64, 512] and gpu.cases[0].verdict_images > 0
    picked = scale.parse_args(["--cases", "sd-vae@384,stylegan2-cifar10", "--steps", "2",
                               "--batches", "1,max", "--precisions", "float32"])
    assert [c.label for c in picked.cases] == ["sd-vae@384", "stylegan2-cifar10@32"]
    assert all(c.steps == 2 and c.batches == (1, "max") and c.precisions == ("float32",) for c in picked.cases)


@pytest.mark.parametrize("bad", [["--cases", "dcgan"], ["--steps", "0"], ["--batches", "0"],
                                 ["--precisions", "fp8"], ["--quick", "--gpu"]])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(SystemExit):
        scale.parse_args(bad)


def test_extrapolation_to_1500_steps_and_8_restarts():
    case = scale.Case("sd-vae", 512, steps=2, restarts=1)
    plain = Variant("x", "jax", lambda: None, n_images=4, steps=2, samples=[12.0, 10.0])
    assert scale.paper_seconds(plain, case) == pytest.approx(10.0 / 4 * 750 * 8)
    timed = scale.Timed("y", "jax", lambda: None, n_images=4, steps=2, samples=[10.0], once_s=2.0)
    per_call = 2.0 + 1500 * (10.0 - 2.0) / 2  # once, then 1500 steps of (t - a) / S
    assert scale.paper_seconds(timed, case) == pytest.approx(per_call / 4 * 8)
    assert scale.paper_seconds(timed, case, naive=True) == scale.paper_seconds(plain, case)
    noisy = scale.Timed("z", "jax", lambda: None, n_images=4, steps=2, samples=[10.0], once_s=11.0)
    assert scale.paper_seconds(noisy, case) == scale.paper_seconds(plain, case)  # a >= t: naive


def test_memory_line_and_largest_batch():
    one = {"call_bytes": 1000 + 300}
    two = {"call_bytes": 1000 + 600}
    mem = scale.memory_line(one, two, params=50, cap=10_000)
    assert mem["bytes_per_image"] == 300 and mem["fixed_bytes"] == 1000
    assert mem["largest_batch"] == (10_000 - 50 - 1000) // 300 == 29
    assert scale.memory_line(one, two, params=50, cap=1200)["largest_batch"] == 0
    assert scale.needed_bytes(mem, batch=2, restarts=4) == 1000 + 300
    case = scale.Case("sd-vae", 512, steps=1, restarts=8, batches=(1, "max", 16), max_batch_cap=20)
    assert scale.resolve_batches(case, 29) == [1, 20, 16]
    assert scale.resolve_batches(case, 0) == [1, 16]


def test_op_dtypes_counts_by_result_type():
    text = ("%c = bf16[1,8,8,4]{3,2,1,0} convolution(%a, %b), window={size=3x3}\n"
            "%d = f32[64,4]{1,0} dot(%p, %q), lhs_contracting_dims={1}\n"
            "conv.2 = f32[1,8,8,4]{3,2,1,0} convolution(a, b)\n")
    assert scale.op_dtypes(text) == {"convolution": {"bf16": 1, "f32": 1}, "dot": {"f32": 1}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    # 4 images per call and 1 step: the verdicts' calls reuse the timed call's compiled step
    scale.main(["--quick", "--tiny", "--cases", "stylegan2-cifar10", "--precisions", "float32,bfloat16",
                "--batches", "4", "--reps", "1", "--verdict-images", "2", "--verdict-steps", "1",
                "--profile-n", "4", "--out", str(out)])
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_tiny_run_reports_every_field(tiny_run):
    results, _ = tiny_run
    assert results["complete"] and results["tiny"]
    assert set(results["peaks"]["best_flops_per_s"]) == {"float32", "bfloat16"}
    (case,) = results["cases"]
    assert case["check"]["max_abs_diff"] < scale.ATOL and case["forward_flops"] > 0
    f32 = case["precisions"]["float32"]
    assert f32["step_flops_per_run"] > 2 * case["forward_flops"]  # forward + input-gradient backward
    assert f32["memory"]["bytes_per_image"] > 0 and f32["memory"]["largest_batch"] >= 1
    assert f32["probe_1"]["ops_compiled"]["convolution"]["f32"] > 0
    rows = {r["name"]: r for r in case["timing"]}
    assert {"torch per-image f32", "ronan-jax f32 B=4", "torch per-image bf16"} <= set(rows)
    for r in rows.values():
        assert r["s_per_image_paper"] > 0 and 0 < r["fraction_of_floor"] and r["timed_restarts"] == 8
        assert r["peak_rss_bytes"] > 0
    assert rows["torch per-image f32"]["vs_torch"] == pytest.approx(1.0)
    assert rows["ronan-jax f32 B=4"]["compile_s"] is not None and rows["torch per-image f32"]["compile_s"] is None
    assert all(r["once_per_call_s"] > 0 for r in rows.values())
    verdicts = case["verdicts"]
    assert verdicts["n_belonging"] == 2 and "auc" in verdicts["float32"]


def test_tiny_run_says_what_did_not_run(tiny_run):
    # The Flax StyleGAN2 computes in float32 (NVlabs force_fp32): the engine's bfloat16
    # casts its weights only, and its step mixes dtypes. The report must say so, not crash.
    results, md = tiny_run
    (case,) = results["cases"]
    bf16 = case["precisions"]["bfloat16"]
    if "error" in bf16:
        assert any("ronan-jax bf16" in note for note in case["not_run"])
        assert "ronan-jax's step fails" in md and "error" in case["verdicts"]["bfloat16"]
    else:
        assert any(r["name"].startswith("ronan-jax bf16") for r in case["timing"])
    assert "| stylegan2-cifar10@16 (tiny) | ronan-jax f32 B=4 | 1 x 8 x 4 |" in md


def test_speedups_pick_the_fastest_batch():
    rows = [{"kind": "torch", "precision": "float32", "name": "t", "s_per_image_paper": 100.0},
            {"kind": "jax", "precision": "float32", "name": "a", "s_per_image_paper": 20.0},
            {"kind": "jax", "precision": "float32", "name": "b", "s_per_image_paper": 10.0},
            {"kind": "jax", "precision": "bfloat16", "name": "c", "s_per_image_paper": 5.0}]
    out = scale.speedups({"timing": rows})
    assert out["float32"] == {"jax": "b", "jax_s_per_image": 10.0, "vs_torch_same_precision": 10.0,
                              "vs_torch_float32": 10.0}
    assert out["bfloat16"] == {"jax": "c", "jax_s_per_image": 5.0, "vs_torch_float32": 20.0}
