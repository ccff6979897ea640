"""Fast checks of the speed benchmark's pieces (no timing assertions)."""

from __future__ import annotations

import functools
import itertools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import floor, speed  # noqa: E402
from benchmarks import torch_baseline as tb  # noqa: E402
from ronan_jax.attribution.profile import quantize_8bit  # noqa: E402
from ronan_jax.engine.config import InversionConfig  # noqa: E402
from ronan_jax.models import dcgan  # noqa: E402

TINY = dcgan.DCGANConfig(nz=16, ngf=8, ndf=8, nc=1, depth=4)


@functools.cache
def _tiny() -> tuple[dcgan.DCGANConfig, dict]:
    variables = jax.jit(functools.partial(dcgan.random_variables, TINY, batch=64))(jax.random.key(0))
    return TINY, jax.tree_util.tree_map(np.asarray, variables)


def test_torch_export_matches_flax():
    cfg, variables = _tiny()
    gen = dcgan.make_generator(cfg, variables)
    net = tb.export_dcgan(variables, cfg, torch.device("cpu"))
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert tb.max_output_diff(gen, net, n=16) < 1e-5


def test_torch_export_round_trips_through_the_converter():
    from converters.dcgan import convert_dcgan_state_dict

    cfg, variables = _tiny()
    state = {f"main.{k}": v.numpy() for k, v in tb.dcgan_state_dict(variables, cfg).items()}
    back = convert_dcgan_state_dict(state, nz=cfg.nz).variables
    flat_a = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(back)[0])
    assert flat_a.keys() == flat_b.keys()
    for k, a in flat_a.items():
        np.testing.assert_array_equal(np.asarray(a), np.asarray(flat_b[k]), err_msg=str(k))


def test_flop_count_of_a_known_config():
    # DCGAN nz=100 ngf=64 nc=3 32x32: convT 100->256 on 1x1, 256->128 on 4x4,
    # 128->64 on 8x8, 64->3 on 16x16; MACs = Cin*Cout*4*4*H*W.
    cfg = dcgan.DCGANConfig(nz=100, ngf=64, nc=3, depth=4)
    macs = 100 * 256 * 16 + 256 * 128 * 16 * 16 + 128 * 64 * 16 * 64 + 64 * 3 * 16 * 256
    assert macs == 17_973_248
    assert floor.forward_flops(cfg) == 2 * macs == 35_946_496
    assert floor.image_flops(cfg, restarts=8, steps=1500) == 35_946_496 * 2 * 8 * 1500
    assert floor.image_flops(cfg, restarts=8, steps=1500, backward_factor=3) == 35_946_496 * 3 * 8 * 1500
    mnist = dcgan.DCGANConfig(nz=100, ngf=32, nc=1, depth=4)
    assert floor.forward_flops(mnist) == 2 * (100 * 128 * 16 + 2 * 128 * 64 * 16 * 16 + 32 * 1 * 16 * 256)
    assert floor.elementwise_flops(cfg) < 0.01 * floor.forward_flops(cfg)


def test_floor_seconds():
    assert floor.floor_seconds(2e9, 100.0) == pytest.approx(0.02)


def test_torch_baseline_min_loss_separates_generated_from_noise():
    cfg, variables = _tiny()
    gen = dcgan.make_generator(cfg, variables)
    net = tb.export_dcgan(variables, cfg, torch.device("cpu"))
    inv = tb.TorchInverter(net, cfg.nz, restarts=4, lr=0.1)
    generated = quantize_8bit(np.asarray(gen.generate(jax.random.key(3), 2)))
    noise = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: multi-threaded OpenMP only stalls on a shared machine
    try:
        ours = inv.invert(generated, steps=40)
        theirs = inv.invert(noise, steps=40)
    finally:
        torch.set_num_threads(threads)
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(theirs))
    assert ours.max() < 0.2 * theirs.min()


def test_cli_quick_and_full_defaults():
    quick = speed.parse_args(["--quick"])
    assert quick.quick and quick.batches == (1, 8) and quick.bf16_batches == (8,)
    assert quick.steps < 1500 and quick.decision_steps == quick.steps
    assert quick.n_decision == 20 and quick.profile_n >= 3 and not quick.torch_compile
    assert quick.plateau_window % quick.check_every == 0
    full = speed.parse_args([])
    assert not full.quick and full.batches == (1, 8, 64, 256) and full.torch_compile
    assert full.bf16_batches == full.batches and full.n_decision == 100 and full.profile_n == 100
    custom = speed.parse_args(
        ["--quick", "--model", "random-ngf64", "--batches", "1,4", "--steps", "30", "--out", "r.json", "--torch-compile"]
    )
    assert custom.model == "random-ngf64" and custom.batches == (1, 4) and custom.steps == 30
    assert custom.out == "r.json" and custom.torch_compile


@pytest.mark.parametrize("bad", [["--batches", "0"], ["--batches", "a,b"], ["--model", "nope"]])
def test_cli_rejects_bad_arguments(bad):
    with pytest.raises(SystemExit):
        speed.parse_args(bad)


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(30), 1)  # many ties
    positive = rng.random(30) < 0.5
    pairs = [(p, q) for p, q in itertools.product(scores[positive], scores[~positive])]
    expected = np.mean([1.0 if p < q else 0.5 if p == q else 0.0 for p, q in pairs])
    assert speed.auc_lower_is_positive(scores, positive) == pytest.approx(expected)
    assert speed.auc_lower_is_positive(np.array([0.1, 0.2, np.nan]), np.array([True, False, False])) == 1.0


def test_an_auc_difference_of_exactly_the_tolerance_is_within_it():
    # 20 + 20 images: 400 pairs, so AUCs are multiples of 0.0025
    assert speed.auc_within(0.995, 1.0) and speed.auc_within(1.0, 0.995)  # 2 pairs swapped
    assert not speed.auc_within(0.9925, 1.0)  # 3 pairs
    assert speed.auc_within(0.7, 0.7) and not speed.auc_within(0.9, 0.8)


def test_warmup_steps_compiles_the_same_segments():
    cfg = InversionConfig(steps=100, loop="chunked", unroll=10, check_every=50)
    assert speed.warmup_steps(100, cfg) == 20
    assert speed.warmup_steps(7, cfg) == 7
    assert speed.warmup_steps(105, cfg) == 15


def test_pooled_baseline_is_the_fastest_single_run():
    a = speed.Variant("a", "torch", lambda: None, 1, 10, samples=[3.0, 1.0])
    b = speed.Variant("b", "torch", lambda: None, 2, 10, samples=[1.5])
    c = speed.Variant("c", "torch", lambda: None, 1, 10)
    assert speed.pooled_best([a, b, c]) == ("b", 0.75)


def test_contenders_drop_collapsed_baselines():
    fast = speed.Variant("1t", "torch", lambda: None, 1, 10, samples=[0.4, 0.5])
    slow = speed.Variant("2t", "torch", lambda: None, 1, 10, samples=[4.0])
    close = speed.Variant("c", "torch", lambda: None, 1, 10, samples=[0.7])
    assert speed.contenders([fast, slow, close]) == {"1t", "c"}
    assert speed.contenders([speed.Variant("x", "torch", lambda: None, 1, 10)]) == {"x"}


def test_run_interleaved_times_a_collapsed_baseline_once():
    import time

    calls = {"fast": 0, "stalled": 0, "jax": 0}

    def run(name, seconds=0.0):
        def fn():
            calls[name] += 1
            time.sleep(seconds)

        return fn

    fast = speed.Variant("fast", "torch", run("fast"), 1, 10)
    stalled = speed.Variant("stalled", "torch", run("stalled", 0.05), 1, 10)
    ours = speed.Variant("jax", "jax", run("jax", 0.05), 1, 10)
    rounds = []
    speed.run_interleaved([fast, stalled, ours], 3, lambda _: None, on_round=lambda: rounds.append(1))
    assert len(fast.samples) == 3 and len(ours.samples) == 3  # jax variants are never dropped
    assert len(stalled.samples) == 1 and "timed once" in stalled.note
    assert calls["stalled"] == 2 and len(rounds) == 3  # warm-up + one timed round


def test_write_json_is_atomic_and_plain(tmp_path):
    import json

    out = tmp_path / "sub" / "r.json"
    speed.write_json(out, {"a": np.float32(1.5), "b": float("nan"), "c": (1, 2)})
    assert json.loads(out.read_text()) == {"a": 1.5, "b": None, "c": [1, 2]}
    assert not list(out.parent.glob("*.tmp"))


def test_early_stopping_defaults_halve_to_one_restart():
    quick, full = speed.parse_args(["--quick"]), speed.parse_args([])
    assert quick.halving_at == full.halving_at == (0.1, 0.25, 0.5)  # 8 -> 4 -> 2 -> 1 restarts
    for s in (quick, full):
        cfg = InversionConfig(steps=s.decision_steps, check_every=s.check_every, halving_at=s.halving_at)
        # every fraction lands on its own check, so all three halvings happen
        marks = {max(cfg.check_every, round(f * cfg.steps / cfg.check_every) * cfg.check_every) for f in cfg.halving_at}
        assert len(marks) == 3 and max(marks) < cfg.steps


def test_timing_only_and_decisions_only_exclude_each_other():
    assert speed.parse_args(["--no-decisions"]).skip_decisions
    assert not speed.parse_args([]).skip_decisions
    with pytest.raises(SystemExit):
        speed.parse_args(["--decisions", "--no-decisions"])
