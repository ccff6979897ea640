"""SD-style VAE: diffusers AutoencoderKL folders converted, reloaded with ``load_generator``
and compared with diffusers (decode, encode, gradients, other sizes, key variants)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL

from converters.api import convert, detect_format
from converters.errors import (
    ArchitectureError,
    CorruptCheckpointError,
    KeyMismatchError,
    NonFiniteTensorError,
)
from converters.sd_vae import convert_sd_vae, vae_key_map
from ronan_jax.models import sd_vae
from ronan_jax.models.checkpoint import load_generator

torch.set_num_threads(1)

ATOL = 1e-4
GRAD_RTOL = 1e-3
TINY = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}


def make_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    """A tiny AutoencoderKL with every parameter perturbed (norm scales, biases included)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**{**TINY, **overrides})
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae.eval()


def unscale(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """What diffusers pipelines feed the decoder for a scaled latent ``z``."""
    cfg = vae.config
    if cfg.latents_mean is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
        return z * std / cfg.scaling_factor + mean
    return z / cfg.scaling_factor + (cfg.shift_factor or 0.0)


def torch_decode(vae: AutoencoderKL, z_nhwc: np.ndarray) -> torch.Tensor:
    z = torch.from_numpy(z_nhwc).permute(0, 3, 1, 2)
    out = vae.decode(unscale(vae, z)).sample
    return (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def assert_decoder_parity(gen, vae: AutoencoderKL, seed: int = 1, batch: int = 4) -> dict:
    rng = np.random.RandomState(seed)
    z = rng.randn(batch, *gen.input_shape).astype(np.float32)
    with torch.no_grad():
        ref = torch_decode(vae, z).numpy()
    fwd = jax.jit(lambda x: gen(x))  # one compiled program: much faster than op-by-op
    out = np.asarray(fwd(jnp.asarray(z)))
    assert out.shape == ref.shape == (batch, *gen.output_shape)
    diff = float(np.abs(out - ref).max())
    diff1 = float(np.abs(np.asarray(fwd(jnp.asarray(z[:1]))) - ref[:1]).max())
    assert max(diff, diff1) <= ATOL, (diff1, diff)
    target = rng.rand(*ref.shape).astype(np.float32)
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    img = (vae.decode(unscale(vae, zt.permute(0, 3, 1, 2))).sample / 2 + 0.5).clamp(0, 1)
    loss = ((img.permute(0, 2, 3, 1) - torch.from_numpy(target)) ** 2).mean()
    loss.backward()
    g_ref = zt.grad.numpy()
    g = np.asarray(jax.jit(jax.grad(lambda x: jnp.mean((gen(x) - target) ** 2)))(jnp.asarray(z)))
    rel = float(np.abs(g - g_ref).max() / np.abs(g_ref).max())
    assert rel <= GRAD_RTOL, rel
    return {"max_abs": max(diff, diff1), "grad_rel": rel}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny VAE saved as safetensors, converted and loaded once for several tests."""
    root = tmp_path_factory.mktemp("vae")
    vae = make_vae()
    vae.save_pretrained(root / "vae")
    card = convert(root / "vae", root / "out")
    return vae, card, load_generator(root / "out"), root


def test_safetensors_folder_parity(tiny):
    vae, card, gen, root = tiny
    assert detect_format(root / "vae") == "sd-vae"
    assert card["architecture"] == "sd-vae" and card["format"] == "sd-vae"
    s = card["summary"]
    assert s["weights_files"] == ["diffusion_pytorch_model.safetensors"]
    assert s["latent_shape"] == [16, 16, 4] and s["downsample_factor"] == 2
    assert s["legacy_attention_keys"] is False and s["ignored_config_fields"] == []
    assert gen.input_shape == (16, 16, 4) and gen.output_shape == (32, 32, 3)
    assert_decoder_parity(gen, vae)


def test_other_image_sizes_share_parameters(tiny):
    vae, _, gen, _ = tiny
    other = gen.for_shape((48, 40, 3))
    assert other.input_shape == (24, 20, 4) and other.param_hash == gen.param_hash
    assert_decoder_parity(other, vae, batch=2)
    with pytest.raises(ValueError, match="multiples of 2"):
        gen.for_shape((33, 32, 3))


def test_encoder_initialiser(tiny):
    vae, _, gen, _ = tiny
    x = np.random.RandomState(5).rand(2, 32, 32, 3).astype(np.float32)
    z = np.asarray(jax.jit(lambda im: sd_vae.initial_latents(gen, im))(jnp.asarray(x)))
    with torch.no_grad():
        post = vae.encode(torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1).latent_dist
        ref = (post.mean * vae.config.scaling_factor).permute(0, 2, 3, 1).numpy()
    assert z.shape == (2, *gen.input_shape)
    assert float(np.abs(z - ref).max()) <= ATOL


def test_bin_weights_and_no_encoder(tmp_path):
    vae = make_vae(seed=2)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.bin").is_file()
    card = convert(tmp_path / "vae", tmp_path / "out", include_encoder=False)
    assert card["summary"]["encoder"] is False and card["summary"]["excluded_keys"] > 0
    gen = load_generator(tmp_path / "out")
    assert "encoder" not in gen.params["params"]
    assert_decoder_parity(gen, vae, batch=2)
    with pytest.raises(ValueError, match="without its encoder"):
        sd_vae.initial_latents(gen, jnp.zeros((1, 32, 32, 3)))


def test_three_blocks_shift_no_quant_no_attention(tmp_path):
    """SD3-like options: shift_factor, no quant convs; no mid attention; factor 4."""
    vae = make_vae(
        seed=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 16),
        layers_per_block=2,
        latent_channels=3,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.5,
        shift_factor=0.1,
        sample_size=16,
    )
    vae.save_pretrained(tmp_path / "vae")
    convert(tmp_path / "vae", tmp_path / "out", image_size=32)
    gen = load_generator(tmp_path / "out")
    assert gen.input_shape == (8, 8, 3) and gen.output_shape == (32, 32, 3)
    assert_decoder_parity(gen, vae, batch=2)


def test_latents_mean_std(tmp_path):
    vae = make_vae(seed=4, latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.5, 1.0, 2.0))
    vae.save_pretrained(tmp_path / "vae")
    convert(tmp_path / "vae", tmp_path / "out")
    assert_decoder_parity(load_generator(tmp_path / "out"), vae, batch=2)


def test_legacy_attention_names_and_fp16_variant(tmp_path):
    """Old checkpoints: query/key/value/proj_attn, stored as 1x1 convolutions, in fp16."""
    vae = make_vae(seed=5).half().float()  # weights exactly representable in fp16
    vae.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    sd = safetensors.torch.load_file(str(path))
    renamed = {}
    for k, v in sd.items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            if new in k:
                k = k.replace(new, old)
                v = v[:, :, None, None] if v.ndim == 2 else v
        renamed[k] = v.half()
    path.unlink()
    safetensors.torch.save_file(renamed, str(tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors"))
    card = convert(tmp_path / "vae", tmp_path / "out")
    assert card["summary"]["legacy_attention_keys"] is True
    assert card["summary"]["weights_dtypes"] == ["float16"]
    assert_decoder_parity(load_generator(tmp_path / "out"), vae, batch=2)


def test_pipeline_folder_uses_its_vae(tmp_path, tiny):
    vae = tiny[0]
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]})
    )
    assert detect_format(tmp_path / "pipe") == "sd-vae"
    card = convert(tmp_path / "pipe", tmp_path / "out")
    assert card["param_hash"] == tiny[1]["param_hash"]


def test_key_map_covers_every_diffusers_parameter():
    for overrides in ({}, {"mid_block_add_attention": False, "use_quant_conv": False}):
        vae = AutoencoderKL(**{**TINY, **overrides})
        config = sd_vae.SDVAEConfig(**{k: v for k, v in {**TINY, **overrides}.items() if k in sd_vae.SDVAEConfig.__dataclass_fields__})
        keys = [r.torch_key for r in vae_key_map(config)]
        assert len(keys) == len(set(keys))
        assert sorted(keys) == sorted(vae.state_dict())


def _one_line(info) -> str:
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def test_missing_unused_and_misshapen(tmp_path, tiny):
    vae = tiny[0]
    vae.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    sd = safetensors.torch.load_file(str(path))
    broken = dict(sd)
    del broken["decoder.conv_out.bias"]
    broken["decoder.extra.weight"] = torch.zeros(3)
    safetensors.torch.save_file(broken, str(path))
    with pytest.raises(KeyMismatchError) as info:
        convert_sd_vae(tmp_path / "vae")
    msg = _one_line(info)
    assert "missing keys: decoder.conv_out.bias" in msg and "unused keys: decoder.extra.weight" in msg
    # weights of another width than the config says
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    safetensors.torch.save_file(sd, str(path))
    cfg["block_out_channels"] = [8, 32]
    (tmp_path / "vae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError) as info:
        convert_sd_vae(tmp_path / "vae")
    assert "wrong shapes" in _one_line(info)


def test_non_finite_tensor_is_refused_naming_it(tmp_path, tiny):
    vae = tiny[0]
    vae.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    sd = safetensors.torch.load_file(str(path))
    key = "decoder.mid_block.attentions.0.group_norm.bias"
    sd[key][1] = float("nan")
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(NonFiniteTensorError) as info:
        convert_sd_vae(tmp_path / "vae")
    assert _one_line(info) == f"{tmp_path / 'vae'}: tensor {key} holds NaN or infinite values"


def test_unsupported_config_and_truncated_weights(tmp_path, tiny):
    vae = tiny[0]
    vae.save_pretrained(tmp_path / "vae")
    cfg_path = tmp_path / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["up_block_types"] = ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError) as info:
        convert_sd_vae(tmp_path / "vae")
    assert "UpDecoderBlock2D" in _one_line(info)
    vae.save_pretrained(tmp_path / "vae")  # restores config.json
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        convert_sd_vae(tmp_path / "vae")
    assert "truncated or corrupt" in _one_line(info)
