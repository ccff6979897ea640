"""DCGAN converter: PyTorch pytorch/examples generators saved the ways owners save them,
converted, reloaded with ``load_generator`` and compared with PyTorch on random inputs."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import save_cuda_tagged

from converters.api import convert
from converters.dcgan import class_conditioned, convert_dcgan
from converters.errors import (
    ArchitectureError,
    ConversionError,
    CorruptCheckpointError,
    KeyMismatchError,
    NonFiniteTensorError,
    UnsafeCheckpointError,
)
from ronan_jax.models.checkpoint import load_generator

torch.set_num_threads(1)

ATOL = 1e-4  # max abs difference of [0, 1] images, float32
GRAD_RTOL = 1e-3  # max abs gradient difference relative to the largest PyTorch gradient


class TorchDCGAN(nn.Module):
    """The pytorch/examples DCGAN generator, generalised to any depth, optional BatchNorm,
    optional Dropout after each ReLU, and an optional one-hot class input."""

    def __init__(
        self,
        nz: int = 8,
        ngf: int = 4,
        nc: int = 3,
        depth: int = 4,
        batchnorm: bool = True,
        dropout: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        feats = ngf * 2 ** (depth - 2)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz + num_classes, feats, 4, 1, 0, bias=False)]
        for i in range(depth - 1):
            if batchnorm:
                layers.append(nn.BatchNorm2d(feats))
            layers.append(nn.ReLU(True))
            if dropout:
                layers.append(nn.Dropout(0.3))
            last = i == depth - 2
            layers.append(nn.ConvTranspose2d(feats, nc if last else feats // 2, 4, 2, 1, bias=False))
            feats //= 2
        layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = z.view(z.shape[0], -1, 1, 1)
        if self.num_classes:
            onehot = F.one_hot(labels, self.num_classes).to(x.dtype)
            x = torch.cat([x, onehot.view(z.shape[0], -1, 1, 1)], dim=1)
        return self.main(x)


def make_torch_dcgan(seed: int = 0, **kwargs) -> TorchDCGAN:
    """Random weights and random (non-trivial) BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = TorchDCGAN(**kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.normal_(0.0, 0.15)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
    return model.eval()


def torch_images(model: TorchDCGAN, z: np.ndarray, label: int | None = None) -> np.ndarray:
    zt = torch.from_numpy(z)
    labels = None if label is None else torch.full((z.shape[0],), label, dtype=torch.long)
    with torch.no_grad():
        out = model(zt, labels)
    return ((out + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def torch_grad(model: TorchDCGAN, z: np.ndarray, target: np.ndarray, label: int | None = None) -> np.ndarray:
    zt = torch.from_numpy(z).requires_grad_(True)
    labels = None if label is None else torch.full((z.shape[0],), label, dtype=torch.long)
    img = ((model(zt, labels) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    loss = ((img - torch.from_numpy(target)) ** 2).mean()
    loss.backward()
    return zt.grad.numpy()


def assert_parity(gen, model: TorchDCGAN, nz: int, label: int | None = None, seed: int = 1) -> dict:
    """Outputs (batch 1 and 4) and MSE input gradients of ``gen`` against ``model``."""
    rng = np.random.RandomState(seed)
    z4 = rng.randn(4, nz).astype(np.float32)
    fwd = jax.jit(lambda z: gen(z))  # one compiled program: much faster than op-by-op
    out4 = np.asarray(fwd(jnp.asarray(z4)))
    ref4 = torch_images(model, z4, label)
    assert out4.shape == ref4.shape
    diff4 = float(np.abs(out4 - ref4).max())
    diff1 = float(np.abs(np.asarray(fwd(jnp.asarray(z4[:1]))) - ref4[:1]).max())
    assert diff4 <= ATOL and diff1 <= ATOL, (diff1, diff4)
    target = rng.rand(*ref4.shape).astype(np.float32)
    g_ref = torch_grad(model, z4, target, label)
    g = np.asarray(jax.jit(jax.grad(lambda z: jnp.mean((gen(z) - target) ** 2)))(jnp.asarray(z4)))
    rel = float(np.abs(g - g_ref).max() / np.abs(g_ref).max())
    assert rel <= GRAD_RTOL, rel
    return {"max_abs": max(diff1, diff4), "grad_rel": rel}


def convert_and_load(src, out_dir, **options):
    card = convert(src, out_dir, fmt="dcgan", **options)
    return card, load_generator(out_dir)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("depth", "size", "ngf"), [(4, 32, 4), (5, 64, 4), (6, 128, 2), (7, 256, 2)]
)
def test_bare_state_dict_sizes(tmp_path, depth, size, ngf):
    model = make_torch_dcgan(depth=depth, ngf=ngf, nz=8, nc=3)
    torch.save(model.state_dict(), tmp_path / "netG.pth")
    card, gen = convert_and_load(tmp_path / "netG.pth", tmp_path / "out")
    s = card["summary"]
    assert (s["depth"], s["nz"], s["ngf"], s["nc"], s["image_size"]) == (depth, 8, ngf, 3, size)
    assert gen.output_shape == (size, size, 3) and gen.input_shape == (8,)
    assert_parity(gen, model, nz=8)


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
def test_batchnorm_and_dropout_index_skipping(tmp_path, batchnorm, dropout):
    model = make_torch_dcgan(depth=4, batchnorm=batchnorm, dropout=dropout, nc=1)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "g.pt")
    card, gen = convert_and_load(tmp_path / "g.pt", tmp_path / "out")
    assert card["config"]["batchnorm"] is batchnorm
    indices = [m[0] for m in card["summary"]["modules"]]
    expected = sorted({int(k.split(".")[1]) for k in sd})
    assert indices == expected
    assert_parity(gen, model, nz=8)


def test_wrapped_checkpoint_with_optimizer_and_namespace(tmp_path):
    """A training checkpoint: generator, discriminator, optimiser state, epoch and the
    script's argparse.Namespace."""
    model = make_torch_dcgan(depth=5, nc=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()
    model(torch.randn(2, 8)).mean().backward()
    opt.step()
    model.eval()
    disc = nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1, bias=False), nn.LeakyReLU(0.2))
    ckpt = {
        "epoch": 7,
        "netG": model.state_dict(),
        "netD": disc.state_dict(),
        "optimizerG": opt.state_dict(),
        "args": argparse.Namespace(nz=8, lr=2e-4),
    }
    torch.save(ckpt, tmp_path / "ckpt.pth")
    card, gen = convert_and_load(tmp_path / "ckpt.pth", tmp_path / "out")
    assert card["summary"]["state_dict_entry"] == "netG"
    assert_parity(gen, model, nz=8)


@pytest.mark.parametrize("entry", ["generator", "state_dict", "model"])
def test_wrapped_under_other_names(tmp_path, entry):
    model = make_torch_dcgan(depth=4)
    torch.save({entry: model.state_dict(), "step": 10}, tmp_path / "c.pt")
    card, gen = convert_and_load(tmp_path / "c.pt", tmp_path / "out")
    assert card["summary"]["state_dict_entry"] == entry
    assert_parity(gen, model, nz=8)


def test_explicit_key_nested_and_prefix(tmp_path):
    model = make_torch_dcgan(depth=4)
    sd = model.state_dict()
    torch.save({"nets": {"g_ema": sd, "g": sd}}, tmp_path / "nested.pt")
    with pytest.raises(ConversionError, match="not a state dict of tensors \\(it holds g, g_ema\\)"):
        convert_dcgan(tmp_path / "nested.pt", key="nets")
    torch.save({"g_ema": sd, "g": sd}, tmp_path / "two.pt")
    with pytest.raises(ConversionError, match="several state dicts"):
        convert_dcgan(tmp_path / "two.pt")
    assert convert_dcgan(tmp_path / "nested.pt", key="nets/g_ema").summary["state_dict_entry"] == "nets/g_ema"
    # Lightning-style: both networks in one flat dict under module prefixes.
    disc = {f"discriminator.main.0.{k}": v for k, v in nn.Conv2d(3, 4, 4).state_dict().items()}
    flat = {**{f"generator.{k}": v for k, v in sd.items()}, **disc}
    torch.save({"state_dict": flat}, tmp_path / "lightning.ckpt")
    out = convert_dcgan(tmp_path / "lightning.ckpt")
    assert out.summary["prefix"] == "generator.main." and out.summary["ignored_keys"] == 2
    out = convert_dcgan(tmp_path / "lightning.ckpt", key="generator")
    assert out.summary["prefix"] == "generator.main."


@pytest.mark.parametrize("variant", ["dataparallel", "no_main_prefix", "safetensors"])
def test_key_prefix_variants(tmp_path, variant):
    model = make_torch_dcgan(depth=4)
    if variant == "dataparallel":
        torch.save(nn.DataParallel(model).state_dict(), tmp_path / "g.pth")
        path = tmp_path / "g.pth"
    elif variant == "no_main_prefix":
        torch.save(model.main.state_dict(), tmp_path / "g.pth")
        path = tmp_path / "g.pth"
    else:
        path = tmp_path / "g.safetensors"
        safetensors.torch.save_file(model.state_dict(), str(path))
    _, gen = convert_and_load(path, tmp_path / "out")
    assert_parity(gen, model, nz=8)




@pytest.mark.parametrize("legacy", [False, True])
def test_legacy_and_cuda_tagged(tmp_path, legacy):
    model = make_torch_dcgan(depth=5)
    torch.save(model.state_dict(), tmp_path / "plain.pth", _use_new_zipfile_serialization=not legacy)
    save_cuda_tagged(model.state_dict(), tmp_path / "cuda.pth", legacy)
    raw = (tmp_path / "cuda.pth").read_bytes()
    if legacy:
        assert b"cuda:0" in raw and raw[:1] == b"\x80"
    else:
        import zipfile

        with zipfile.ZipFile(tmp_path / "cuda.pth") as zf:
            pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            assert b"cuda:0" in zf.read(pkl)
    for name in ("plain", "cuda"):
        _, gen = convert_and_load(tmp_path / f"{name}.pth", tmp_path / f"out_{name}")
        assert_parity(gen, model, nz=8)


def test_half_precision_weights(tmp_path):
    model = make_torch_dcgan(depth=4)
    model.half().float()  # round the weights to fp16 values, then save them as fp16
    torch.save(model.half().state_dict(), tmp_path / "g16.pth")
    model.float()
    _, gen = convert_and_load(tmp_path / "g16.pth", tmp_path / "out")
    assert jax.tree_util.tree_leaves(gen.params)[0].dtype == np.float32
    assert_parity(gen, model, nz=8)


# ----------------------------------------------------------------------------- conditional


@pytest.mark.parametrize("given", ["nz", "num_classes"])
def test_conditional(tmp_path, given):
    model = make_torch_dcgan(depth=4, nz=8, num_classes=5)
    torch.save(model.state_dict(), tmp_path / "cgan.pth")
    opts = {"nz": 8} if given == "nz" else {"num_classes": 5}
    card, gen = convert_and_load(tmp_path / "cgan.pth", tmp_path / "out", **opts)
    assert (card["config"]["nz"], card["config"]["num_classes"]) == (8, 5)
    assert gen.condition is None and gen.input_shape == (8,)
    for label in (0, 3):
        g = class_conditioned(gen, label)
        assert g.info["label"] == label and g.name.endswith(f"[class={label}]")
        assert_parity(g, model, nz=8, label=label)
    # Per-image conditions through the generator's apply (the engine's path).
    z = np.random.RandomState(0).randn(2, 8).astype(np.float32)
    out = gen.apply_fn(gen.params, jnp.asarray(z), jnp.asarray([1, 4], jnp.int32))
    ref = np.concatenate([torch_images(model, z[:1], 1), torch_images(model, z[1:], 4)])
    assert float(np.abs(np.asarray(out) - ref).max()) <= ATOL
    with pytest.raises(ValueError, match="outside"):
        class_conditioned(gen, 5)
    with pytest.raises(ValueError, match="needs a class label"):
        gen(jnp.asarray(z))


def test_conditional_without_nz_reads_as_unconditional_and_mismatch_is_refused(tmp_path):
    model = make_torch_dcgan(depth=4, nz=8, num_classes=5)
    torch.save(model.state_dict(), tmp_path / "cgan.pth")
    out = convert_dcgan(tmp_path / "cgan.pth")
    assert (out.config["nz"], out.config["num_classes"]) == (13, 0)
    with pytest.raises(ArchitectureError, match="nz=8 \\+ num_classes=4"):
        convert_dcgan(tmp_path / "cgan.pth", nz=8, num_classes=4)
    with pytest.raises(ValueError, match="not a conditional DCGAN"):
        plain = make_torch_dcgan(depth=4)
        torch.save(plain.state_dict(), tmp_path / "plain.pth")
        class_conditioned(convert_and_load(tmp_path / "plain.pth", tmp_path / "o")[1], 0)


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_resize_to_matches_torch_antialiased_interpolate(tmp_path, method):
    """64x64 DCGAN audited at 32x32 (the authors' CIFAR-10 setting)."""
    model = make_torch_dcgan(depth=5)
    torch.save(model.state_dict(), tmp_path / "g.pth")
    card, gen = convert_and_load(tmp_path / "g.pth", tmp_path / "out", resize_to=32, resize_method=method)
    assert card["config"]["resize_to"] == 32 and card["summary"]["output_size"] == 32
    assert card["converter"]["options"] == {"resize_to": 32, "resize_method": method}
    assert gen.output_shape == (32, 32, 3)
    z = np.random.RandomState(3).randn(4, 8).astype(np.float32)
    with torch.no_grad():
        img = (model(torch.from_numpy(z)) + 1) / 2
        mode = "bilinear" if method == "linear" else "bicubic"
        ref = F.interpolate(img, size=(32, 32), mode=mode, antialias=True, align_corners=False)
    ref = ref.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert float(np.abs(np.asarray(gen(jnp.asarray(z))) - ref).max()) <= ATOL


def test_image_size_is_verified(tmp_path):
    model = make_torch_dcgan(depth=5)
    torch.save(model.state_dict(), tmp_path / "g.pth")
    assert convert_dcgan(tmp_path / "g.pth", image_size=64).summary["image_size"] == 64
    with pytest.raises(ArchitectureError, match=r"64x64 images .* not the expected 32x32"):
        convert_dcgan(tmp_path / "g.pth", image_size=32)


# ----------------------------------------------------------------------------- bad checkpoints


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


class _ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
        self.fc = nn.Linear(4, 10)


class _Custom:
    """Any user class: unpickling it would import and run code from the checkpoint."""

    def __init__(self) -> None:
        self.value = 1


def test_wrong_architecture(tmp_path):
    torch.save(_ResNetLike().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ArchitectureError) as info:
        convert_dcgan(tmp_path / "resnet.pth")
    assert "not a DCGAN generator" in _one_line(info)


def test_discriminator_is_refused(tmp_path):
    disc = nn.Sequential(
        nn.Conv2d(3, 4, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
        nn.Conv2d(16, 1, 4, 1, 0, bias=False),
    )
    torch.save({"main." + k: v for k, v in disc.state_dict().items()}, tmp_path / "netD.pth")
    with pytest.raises(ArchitectureError) as info:
        convert_dcgan(tmp_path / "netD.pth")
    assert "discriminator" in _one_line(info)


def test_conv_bias_is_refused(tmp_path):
    model = make_torch_dcgan(depth=4)
    sd = dict(model.state_dict())
    sd["main.0.bias"] = torch.zeros(sd["main.0.weight"].shape[1])
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(ArchitectureError) as info:
        convert_dcgan(tmp_path / "g.pth")
    assert "bias" in _one_line(info)


def test_truncated_file(tmp_path):
    model = make_torch_dcgan(depth=4)
    for legacy in (False, True):
        path = tmp_path / f"g{legacy}.pth"
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CorruptCheckpointError) as info:
            convert_dcgan(path)
        assert "truncated or corrupt" in _one_line(info)


def test_missing_and_unused_keys(tmp_path):
    model = make_torch_dcgan(depth=4)
    sd = dict(model.state_dict())
    del sd["main.1.running_var"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ArchitectureError) as info:
        convert_dcgan(tmp_path / "missing.pth")
    assert "main.1" in _one_line(info) and "running statistics" in _one_line(info)
    sd = dict(model.state_dict())
    del sd["main.3.weight"]  # a whole layer gone: BatchNorm follows BatchNorm
    torch.save(sd, tmp_path / "nolayer.pth")
    with pytest.raises(ArchitectureError) as info:
        convert_dcgan(tmp_path / "nolayer.pth")
    _one_line(info)
    sd = dict(model.state_dict())
    sd["label_emb.weight"] = torch.zeros(10, 8)  # an embedding this architecture lacks
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(KeyMismatchError) as info:
        convert_dcgan(tmp_path / "extra.pth")
    assert "unused keys: label_emb.weight" in _one_line(info)


def test_pickled_code_is_refused_and_not_run(tmp_path):
    model = make_torch_dcgan(depth=4)
    torch.save({"netG": model.state_dict(), "cfg": _Custom()}, tmp_path / "code.pth")
    with pytest.raises(UnsafeCheckpointError) as info:
        convert_dcgan(tmp_path / "code.pth")
    msg = _one_line(info)
    assert "_Custom" in msg and "refused" in msg


@pytest.mark.parametrize(
    ("key", "bad"),
    [("main.0.weight", np.nan), ("main.1.bias", np.inf), ("main.4.running_var", np.nan)],
)
def test_non_finite_tensor_is_refused_naming_it(tmp_path, key, bad):
    sd = dict(make_torch_dcgan(depth=4).state_dict())
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = bad
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(NonFiniteTensorError) as info:
        convert_dcgan(tmp_path / "g.pth")
    assert _one_line(info) == f"{tmp_path / 'g.pth'}: tensor {key} holds NaN or infinite values"
