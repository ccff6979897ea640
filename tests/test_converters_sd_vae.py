"""SD-style VAE: diffusers AutoencoderKL folders converted, reloaded with ``load_generator``
and compared with diffusers (decode, encode, gradients, other sizes, key variants); the VAE's
own encoder is the converted checkpoint's encoder, and warm starts begin at its output."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL
from e2e_helpers import invoke

from converters.api import convert, detect_format
from converters.errors import (
    ArchitectureError,
    CorruptCheckpointError,
    KeyMismatchError,
    NonFiniteTensorError,
)
from converters.sd_vae import convert_sd_vae, vae_key_map
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.models import sd_vae, sd_vae_encoder
from ronan_jax.models.checkpoint import load_generator, read_card
from ronan_jax.models.resolver import load_model

torch.set_num_threads(1)

ATOL = 1e-4
ENC_ATOL = 1e-5  # encoder output (the scaled latent) and G(E(x)) against diffusers
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


def scale(vae: AutoencoderKL, mean: torch.Tensor) -> torch.Tensor:
    """The scaled latent of an unscaled one, as diffusers pipelines encode images."""
    cfg = vae.config
    if cfg.latents_mean is not None:
        m = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
        return (mean - m) * cfg.scaling_factor / std
    return (mean - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def torch_reconstruct(vae: AutoencoderKL, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' scaled posterior mean of NHWC images in [0, 1], and its decoding (NHWC [0, 1])."""
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
        rec = (vae.decode(mean).sample / 2 + 0.5).clamp(0, 1)
    return scale(vae, mean).permute(0, 2, 3, 1).numpy(), rec.permute(0, 2, 3, 1).numpy()


def assert_encoder_parity(gen, vae: AutoencoderKL, seed: int = 5, batch: int = 2) -> dict:
    """E(x) is diffusers' scaled posterior mean and G(E(x)) its reconstruction."""
    x = np.random.RandomState(seed).rand(batch, *gen.output_shape).astype(np.float32)
    ref_z, ref_rec = torch_reconstruct(vae, x)
    z = np.asarray(jax.jit(gen.encoder)(jnp.asarray(x)))
    rec = np.asarray(jax.jit(gen)(jnp.asarray(z)))
    assert z.shape == ref_z.shape == (batch, *gen.input_shape)
    enc, dec = float(np.abs(z - ref_z).max()), float(np.abs(rec - ref_rec).max())
    assert enc <= ENC_ATOL and dec <= ENC_ATOL, (enc, dec)
    return {"encoder_max_abs": enc, "reconstruction_max_abs": dec}


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


def test_the_vaes_encoder_is_the_checkpoints_encoder_with_its_provenance(tiny):
    vae, card, gen, root = tiny
    entry = card["encoder"]
    assert entry == read_card(root / "out")["encoder"]
    assert entry["architecture"] == sd_vae_encoder.ARCHITECTURE and entry["source"] == "converted"
    assert entry["from"]["keys"] == ["encoder.*", "quant_conv.*"]
    assert entry["config"]["block_out_channels"] == [8, 16]
    assert entry["config"]["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    assert card["summary"]["encoder"] is True and card["config"]["include_encoder"] is False
    # The model's parameters are the decoder's; the encoder is hashed into the identity apart.
    assert sorted(gen.params["params"]) == ["decoder", "post_quant_conv"]
    assert sorted(gen.encoder.params["params"]) == ["encoder", "quant_conv"]
    assert gen.identity["encoder_hash"] == entry["param_hash"] == gen.encoder.param_hash
    assert gen.encoder.info["source"] == "converted"


def test_the_encoder_gives_the_scaled_posterior_mean_and_g_of_e_the_reconstruction(tiny):
    vae, _, gen, _ = tiny
    figures = assert_encoder_parity(gen, vae, batch=3)
    assert figures["encoder_max_abs"] <= ENC_ATOL


def test_initial_latents_of_a_whole_vae_tree_are_the_encoders_output(tiny):
    _, _, gen, _ = tiny
    whole = gen.replace(
        params={"params": {**gen.params["params"], **gen.encoder.params["params"]}},
        info={**gen.info, "config": {**gen.info["config"], "include_encoder": True}},
    )
    x = jnp.asarray(np.random.RandomState(9).rand(2, *gen.output_shape).astype(np.float32))
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda im: sd_vae.initial_latents(whole, im))(x)),
        np.asarray(jax.jit(gen.encoder)(x)),
        atol=1e-6,
    )


def test_other_image_sizes_share_parameters(tiny):
    vae, _, gen, _ = tiny
    other = gen.for_shape((48, 40, 3))
    assert other.input_shape == (24, 20, 4) and other.param_hash == gen.param_hash
    assert_decoder_parity(other, vae, batch=2)
    with pytest.raises(ValueError, match="multiples of 2"):
        gen.for_shape((33, 32, 3))


def test_resized_siblings_from_the_resolver_keep_the_encoder(tiny):
    vae, _, _, root = tiny
    gen = load_model(str(root / "out"))
    other = gen.for_shape((48, 40, 3))
    assert other.encoder is gen.encoder and other.identity == gen.identity
    assert_encoder_parity(other, vae, seed=6, batch=1)
    grey = gen.for_shape((48, 40, 1))  # greyscale targets: the encoder reads them replicated
    x = np.random.RandomState(7).rand(1, 48, 40, 1).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(grey.encoder(jnp.asarray(x))),
        np.asarray(other.encoder(jnp.asarray(np.repeat(x, 3, axis=-1)))),
        atol=1e-6,
    )


def test_a_warm_inversion_starts_at_the_encoding(tiny):
    """With a negligible step, the warm run's best loss is its start's: the MSE between the
    image and diffusers' own reconstruction of it; the cold restart is still there."""
    vae, _, gen, _ = tiny
    x = np.random.RandomState(8).rand(2, *gen.output_shape).astype(np.float32)
    _, rec = torch_reconstruct(vae, x)
    want = ((rec - x) ** 2).mean(axis=(1, 2, 3))
    cfg = InversionConfig(steps=1, restarts=1, lr=1e-7, warm_start=True)
    result = invert(gen, x, cfg)
    assert result.restart_best.shape == (2, 2)
    np.testing.assert_allclose(result.restart_best[:, 0], want, rtol=1e-4)
    np.testing.assert_allclose(result.loss, np.minimum(want, result.restart_best[:, 1]), rtol=1e-4)


def test_bin_weights_and_no_encoder(tmp_path):
    vae = make_vae(seed=2)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.bin").is_file()
    card = convert(tmp_path / "vae", tmp_path / "out", include_encoder=False)
    assert card["summary"]["encoder"] is False and card["summary"]["excluded_keys"] > 0
    assert "encoder" not in card and "encoder" not in read_card(tmp_path / "out")
    assert not (tmp_path / "out" / "encoder").exists()
    gen = load_generator(tmp_path / "out")
    assert gen.encoder is None and "encoder" not in gen.params["params"]
    assert_decoder_parity(gen, vae, batch=2)


def test_ronan_convert_says_it_kept_the_encoder(tmp_path, tiny):
    vae = tiny[0]
    vae.save_pretrained(tmp_path / "vae")
    result = invoke(["convert", tmp_path / "vae", "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    entry = read_card(tmp_path / "out")["encoder"]
    assert f"Kept its encoder (sd-vae-encoder, hash {entry['param_hash'][:12]})" in result.output


def test_a_decoder_only_state_dict_converts_without_an_encoder(tmp_path, tiny):
    vae, card, _, _ = tiny
    vae.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    sd = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file(
        {k: v for k, v in sd.items() if not k.startswith(("encoder.", "quant_conv."))}, str(path)
    )
    decoder_only = convert(tmp_path / "vae", tmp_path / "out")
    assert "encoder" not in decoder_only and decoder_only["summary"]["encoder"] is False
    assert decoder_only["summary"]["excluded_keys"] == 0
    assert decoder_only["param_hash"] == card["param_hash"]  # the same decoder
    assert load_generator(tmp_path / "out").encoder is None
    with pytest.raises(KeyMismatchError, match=r"missing keys: encoder\.conv_in"):
        convert_sd_vae(tmp_path / "vae", include_encoder=True)


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
    assert sorted(gen.encoder.params["params"]) == ["encoder"]  # no quant_conv
    assert_encoder_parity(gen, vae)  # E subtracts the shift before scaling


def test_latents_mean_std(tmp_path):
    vae = make_vae(seed=4, latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.5, 1.0, 2.0))
    vae.save_pretrained(tmp_path / "vae")
    convert(tmp_path / "vae", tmp_path / "out")
    gen = load_generator(tmp_path / "out")
    assert_decoder_parity(gen, vae, batch=2)
    assert_encoder_parity(gen, vae)


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
