"""StyleGAN2 converters: NVlabs network pickles (crafted here with the persistence structure
of real ones, their embedded source booby-trapped) and rosinality checkpoints saved by
torch.save; detection by content; refusals of unsafe globals and unsupported generators."""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_stylegan2 as ts
from converters.api import convert, detect_format
from converters.errors import (
    ArchitectureError,
    CorruptCheckpointError,
    KeyMismatchError,
    UnsafeCheckpointError,
)
from converters.stylegan_pickle import convert_stylegan_pickle
from converters.stylegan_rosinality import MEAN_LATENT_SAMPLES, convert_rosinality
from ronan_jax.models import stylegan2 as sg
from ronan_jax.models.checkpoint import load_generator

SYN = dict(channel_base=256, channel_max=16)


def trap_source(marker: Path) -> str:
    """Module source that would leave ``marker`` behind if anything executed it."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\nclass Generator: pass\n"


def nvlabs_generator(seed: int, c_dim: int = 3, res: int = 32, **synthesis) -> ts.Generator:
    return ts.randomize(ts.Generator(16, c_dim, 16, res, 3, mapping_kwargs=dict(num_layers=2),
                                     synthesis_kwargs={**SYN, **synthesis}), seed=seed)


@pytest.fixture(scope="module")
def pickled(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pkl")
    marker = root / "MARKER"
    g_ema, g = nvlabs_generator(0), nvlabs_generator(1)
    path = root / "network-snapshot-000100.pkl"
    path.write_bytes(ts.network_pickle_bytes(
        {"G": g, "D": ts.Discriminator(32), "G_ema": g_ema, "augment_pipe": None}, trap_source(marker)))
    return {"root": root, "path": path, "marker": marker, "G_ema": g_ema, "G": g}


def torch_out(net: ts.Generator, z: np.ndarray, labels: list[int], noise: str, psi: float = 1.0) -> np.ndarray:
    c = torch.nn.functional.one_hot(torch.tensor(labels), net.c_dim).float()
    with torch.no_grad():
        img = net(torch.from_numpy(z), c, psi, None, noise)
    return ((img.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1).numpy()


def test_a_network_pickle_converts_with_parity_and_its_source_never_runs(pickled, tmp_path):
    assert detect_format(pickled["path"]) == "stylegan-pickle"
    card = convert(pickled["path"], tmp_path / "sg", noise_mode="const", truncation_psi=0.8)
    assert not pickled["marker"].exists()
    assert card["architecture"] == "stylegan2" and card["format"] == "stylegan-pickle"
    assert card["config"]["num_classes"] == 3 and card["summary"]["network"] == "G_ema"
    assert card["summary"]["networks_in_pickle"] == ["D", "G", "G_ema"]
    gen = load_generator(tmp_path / "sg")
    z = np.random.RandomState(0).randn(3, 16).astype(np.float32)
    out = jax.jit(gen.apply_fn)(gen.params, jnp.asarray(z), jnp.asarray([0, 1, 2], jnp.int32))
    ref = torch_out(pickled["G_ema"], z, [0, 1, 2], "const", 0.8)
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5
    assert not pickled["marker"].exists()


def test_the_training_generator_is_taken_on_request(pickled):
    got = convert_stylegan_pickle(pickled["path"], network="G")
    want = pickled["G"].state_dict()
    fc0 = got.variables["params"]["mapping"]["fc0"]["kernel"]
    assert got.summary["network"] == "G"
    np.testing.assert_array_equal(fc0, want["mapping.fc0.weight"].numpy().T)
    const = got.variables["params"]["synthesis"]["b4_const"]
    np.testing.assert_array_equal(const, want["synthesis.b4.const"].numpy().transpose(1, 2, 0))


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize(("func", "name"), [(os.system, f"{os.system.__module__}.system"),
                                            (builtins.eval, "builtins.eval")])
def test_a_pickle_with_a_malicious_global_is_refused_naming_it(pickled, tmp_path, func, name):
    marker = tmp_path / "PWNED"
    code = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pkl"
    path.write_bytes(ts.network_pickle_bytes(
        {"G_ema": pickled["G_ema"], "extra": _Evil(func, code)}, trap_source(marker)))
    assert detect_format(path) == "stylegan-pickle"
    with pytest.raises(UnsafeCheckpointError, match=name.replace(".", r"\.")):
        convert(path, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_stylegan3_generator_is_refused_clearly(pickled, tmp_path):
    net = nvlabs_generator(2)
    cls = type("SynthesisInput", (ts._Recorded,), {})
    inp = cls()
    inp._record((), dict(w_dim=16, channels=16, size=36, sampling_rate=16, bandwidth=2))
    inp.freqs = torch.nn.Parameter(torch.randn(16, 2))
    net.synthesis.input = inp
    path = tmp_path / "sg3.pkl"
    path.write_bytes(ts.network_pickle_bytes({"G_ema": net}, trap_source(tmp_path / "M")))
    with pytest.raises(ArchitectureError, match="StyleGAN3"):
        convert_stylegan_pickle(path)


def test_unsupported_synthesis_architecture_is_refused(tmp_path):
    net = nvlabs_generator(3)
    net._init_kwargs = {**net._init_kwargs, "synthesis_kwargs": {**SYN, "architecture": "resnet"}}
    path = tmp_path / "resnet.pkl"
    path.write_bytes(ts.network_pickle_bytes({"G_ema": net}, trap_source(tmp_path / "M")))
    with pytest.raises(ArchitectureError, match="only 'skip'"):
        convert_stylegan_pickle(path)


def test_a_truncated_pickle_is_corrupt_not_a_crash(pickled, tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickled["path"].read_bytes()[:20000])
    with pytest.raises(CorruptCheckpointError):
        convert_stylegan_pickle(path)


def test_tensors_are_checked_against_the_recorded_architecture(tmp_path):
    net = nvlabs_generator(4)
    net._init_kwargs = {**net._init_kwargs, "w_dim": 32}  # kwargs that do not fit the tensors
    path = tmp_path / "mismatch.pkl"
    path.write_bytes(ts.network_pickle_bytes({"G_ema": net}, trap_source(tmp_path / "M")))
    with pytest.raises(ArchitectureError, match="wrong shapes"):
        convert_stylegan_pickle(path)


# ----------------------------------------------------------------------------- rosinality

CH = {4: 16, 8: 16, 16: 16, 32: 8}


@pytest.fixture(scope="module")
def rosinality(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ros")
    net = ts.randomize(ts.RosinalityGenerator(32, 16, 2, channels=CH), seed=5)
    latent_avg = torch.randn(16) * 0.5
    exported = root / "stylegan2-tiny.pt"
    torch.save({"g_ema": net.state_dict(), "latent_avg": latent_avg}, exported)
    training = root / "000100.pt"
    torch.save({"g": net.state_dict(), "d": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)},
                "g_ema": net.state_dict(), "args": argparse.Namespace(size=32, n_mlp=2)}, training)
    return {"net": net, "latent_avg": latent_avg, "exported": exported, "training": training}


def test_a_rosinality_checkpoint_converts_with_parity(rosinality, tmp_path):
    assert detect_format(rosinality["exported"]) == "stylegan-rosinality"
    card = convert(rosinality["exported"], tmp_path / "ros", noise_mode="const", truncation_psi=0.7)
    s = card["summary"]
    assert (s["size"], s["style_dim"], s["n_mlp"], s["w_avg"]) == (32, 16, 2, "latent_avg")
    assert card["config"]["channel_base"] == 256 and card["config"]["channel_max"] == 16
    gen = load_generator(tmp_path / "ros")
    z = np.random.RandomState(1).randn(3, 16).astype(np.float32)
    out = np.asarray(jax.jit(gen.apply_fn)(gen.params, jnp.asarray(z), None))
    with torch.no_grad():
        img = rosinality["net"](torch.from_numpy(z), truncation=0.7,
                                truncation_latent=rosinality["latent_avg"], randomize_noise=False)
    ref = ((img.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1).numpy()
    assert 0.2 < ref.mean() < 0.8
    assert np.abs(out - ref).max() <= 1e-5


def test_a_training_snapshot_without_latent_avg_gets_the_mean_mapped_w(rosinality):
    got = convert_rosinality(rosinality["training"], network="g")
    assert got.summary["network"] == "g" and got.summary["w_avg"].startswith("mean of 4096")
    z = np.array(jax.random.normal(jax.random.key(0), (MEAN_LATENT_SAMPLES, 16)))
    with torch.no_grad():
        mean = rosinality["net"].style(torch.from_numpy(z)).mean(0).numpy()
    np.testing.assert_allclose(got.variables["buffers"]["mapping"]["w_avg"], mean, atol=1e-5)
    assert got.summary["channel_multiplier"] is None  # a custom (tiny) channel table


def test_rosinality_keys_must_all_be_used(rosinality, tmp_path):
    state = dict(rosinality["net"].state_dict())
    state["convs.0.conv.extra"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save({"g_ema": state}, path)
    with pytest.raises(KeyMismatchError, match=r"unused keys: convs\.0\.conv\.extra"):
        convert_rosinality(path)


def test_the_config_round_trips_through_the_card(rosinality):
    got = convert_rosinality(rosinality["exported"], input_space="w+")
    cfg = sg.StyleGAN2Config(**got.config)
    assert dataclasses.asdict(cfg) == got.config and cfg.input_shape == (8, 16)
