"""diffusers ``AutoencoderKL`` (Stable-Diffusion-style VAE) -> ``ronan_jax.models.sd_vae``.

Reads a ``save_pretrained`` folder: ``config.json`` plus ``diffusion_pytorch_model.safetensors``
(or ``.bin``, an ``fp16`` variant, or a sharded ``*.index.json``); a pipeline folder with
``model_index.json`` is read through its ``vae/`` subfolder (latent diffusion is audited
through its decoder). The architecture comes from ``config.json``, with diffusers' defaults for
absent fields; the tensors are mapped by :func:`vae_key_map`, an explicit table built from the
config with the layer and block tables of :mod:`converters.keymap`, and every one is checked
against a fresh Flax template. Attention weights saved under
diffusers' deprecated names (``query``/``key``/``value``/``proj_attn``, possibly as 1x1
convolutions) are accepted as aliases.

The encoder (with ``quant_conv``), when the weights hold it, is kept as the checkpoint's own
encoder (:mod:`ronan_jax.models.sd_vae_encoder`): its output is the posterior mean in the
decoder Generator's input space, so ``G(E(x))`` is the VAE's reconstruction and warm starts
need no training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters.base import Converted, ConvertedEncoder, fill_template, sha256_file
from converters.errors import ArchitectureError, ConversionError, preview
from converters.keymap import (
    CONV,
    NORM,
    KeyRule,
    Leaves,
    attention_rules,
    layer_rules,
    map_tensors,
    resnet_rules,
)
from converters.readers import TensorTable, load_state_dict
from ronan_jax.models import sd_vae, sd_vae_encoder

__all__ = [
    "convert_sd_vae",
    "convert_sd_vae_state_dict",
    "has_encoder_tensors",
    "sd_vae_config",
    "vae_key_map",
]

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
INDEX_FILES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
# config.json fields -> SDVAEConfig fields of the same name.
CONFIG_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "act_fn",
    "mid_block_add_attention",
    "use_quant_conv",
    "use_post_quant_conv",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
)
# Fields read and checked, or irrelevant to a float32 decoder.
_CHECKED_FIELDS = ("_class_name", "down_block_types", "up_block_types", "sample_size")
_IRRELEVANT_FIELDS = ("_diffusers_version", "_name_or_path", "force_upcast")
# State-dict key prefixes of the encoder's tensors.
_ENCODER_PREFIXES = ("encoder.", "quant_conv.")

def vae_key_map(config: sd_vae.SDVAEConfig) -> list[KeyRule]:
    """Every tensor of ``AutoencoderKL(config)``, one rule each, in state-dict order."""
    rules: list[KeyRule] = []

    def add(module: str, leaves: Leaves) -> None:
        rules.extend(layer_rules(module, leaves))

    def resnet(prefix: str, cin: int, cout: int) -> None:
        rules.extend(resnet_rules(prefix, (cin, cout), time_embedding=False))

    def mid(prefix: str, c: int) -> None:
        resnet(f"{prefix}.resnets.0", c, c)
        if config.mid_block_add_attention:
            rules.extend(attention_rules(f"{prefix}.attentions.0", group_norm=True))
        resnet(f"{prefix}.resnets.1", c, c)

    chans = config.block_out_channels
    last = len(chans) - 1
    # decoder
    add("decoder.conv_in", CONV)
    mid("decoder.mid_block", chans[-1])
    prev = chans[-1]
    for i, ch in enumerate(reversed(chans)):
        for j in range(config.layers_per_block + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else ch, ch)
        if i < last:
            add(f"decoder.up_blocks.{i}.upsamplers.0.conv", CONV)
        prev = ch
    add("decoder.conv_norm_out", NORM)
    add("decoder.conv_out", CONV)
    if config.use_post_quant_conv:
        add("post_quant_conv", CONV)
    if config.include_encoder:
        add("encoder.conv_in", CONV)
        prev = chans[0]
        for i, ch in enumerate(chans):
            for j in range(config.layers_per_block):
                resnet(f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else ch, ch)
            if i < last:
                add(f"encoder.down_blocks.{i}.downsamplers.0.conv", CONV)
            prev = ch
        mid("encoder.mid_block", chans[-1])
        add("encoder.conv_norm_out", NORM)
        add("encoder.conv_out", CONV)
        if config.use_quant_conv:
            add("quant_conv", CONV)
    return rules


def sd_vae_config(
    diffusers_config: dict[str, Any],
    *,
    image_size: int | None = None,
    include_encoder: bool = True,
    source: str = "config.json",
) -> tuple[sd_vae.SDVAEConfig, list[str]]:
    """An :class:`SDVAEConfig` from diffusers' ``config.json`` (absent fields take diffusers'
    defaults) and the names of config fields that were not used."""
    cfg = diffusers_config
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ArchitectureError(f"{source}: _class_name is {cls!r}, not AutoencoderKL")
    n = len(cfg.get("block_out_channels", (64,)))
    for field, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(cfg.get(field, [block] * n))
        if types != [block] * n:
            raise ArchitectureError(
                f"{source}: {field} {types} are not {n} x {block}; only the SD-style VAE is supported"
            )
    sample = cfg.get("sample_size", 32)
    if isinstance(sample, list | tuple):
        if len(set(sample)) != 1:
            raise ArchitectureError(f"{source}: non-square sample_size {sample}; pass image_size=")
        sample = sample[0]
    values = {k: cfg[k] for k in CONFIG_FIELDS if k in cfg}
    try:
        config = sd_vae.SDVAEConfig(
            **values,
            sample_size=int(image_size or sample),
            include_encoder=bool(include_encoder),
        )
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"{source}: unsupported VAE config ({exc})") from exc
    ignored = sorted(
        k for k in cfg if k not in CONFIG_FIELDS + _CHECKED_FIELDS + _IRRELEVANT_FIELDS
    )
    return config, ignored


def convert_sd_vae_state_dict(
    state: dict[str, np.ndarray], config: sd_vae.SDVAEConfig, source: str = "state dict"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flax variables for ``config`` from a diffusers state dict, and facts about the keys."""
    table = TensorTable(state, source)
    rules = vae_key_map(config)
    values = map_tensors(table, rules, source)
    # Found under a pre-0.15 attention name only (the rule's own key is absent).
    legacy_used = any(
        r.torch_key not in state and any(a in state for a in r.aliases) for r in rules
    )
    excluded = []
    if not config.include_encoder:
        excluded = [k for k in state if k.startswith(_ENCODER_PREFIXES)]
        table.ignore(*excluded)
    table.finish()
    variables = fill_template(sd_vae.variable_shapes(config), values, source)
    return variables, {"legacy_attention_keys": legacy_used, "excluded_keys": len(excluded)}


def convert_sd_vae(
    src: str | Path, *, image_size: int | None = None, include_encoder: bool | None = None
) -> Converted:
    """Read a diffusers ``AutoencoderKL`` folder (or a pipeline folder's ``vae/``).

    The decoder becomes the Generator (its parameters: ``decoder`` and ``post_quant_conv``);
    the encoder and ``quant_conv``, when kept, become the checkpoint's encoder
    (:mod:`ronan_jax.models.sd_vae_encoder`: the scaled posterior mean, the decoder's input),
    so the converted model warm-starts at once.

    Args:
        src: folder with ``config.json`` and the weights.
        image_size: the Generator's default image side (default: the config's
            ``sample_size``); any multiple of the downsampling factor works later through
            ``Generator.for_shape``.
        include_encoder: keep the encoder (default: when the weights hold ``encoder.*`` or
            ``quant_conv.*`` tensors; a decoder-only state dict converts without one). True
            requires every encoder tensor; False drops them.
    """
    folder = _vae_folder(Path(src))
    config_path = folder / "config.json"
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{config_path}: unreadable config ({exc})") from exc
    config, ignored = sd_vae_config(raw, image_size=image_size, source=str(config_path))
    weight_files = _weight_files(folder)
    state: dict[str, np.ndarray] = {}
    for path in weight_files:
        state.update(load_state_dict(path))
    dtypes = sorted({str(a.dtype) for a in state.values()})
    keep = has_encoder_tensors(state) if include_encoder is None else bool(include_encoder)
    config = dataclasses.replace(config, include_encoder=keep)
    variables, facts = convert_sd_vae_state_dict(state, config, source=str(folder))
    # The encoder travels as the checkpoint's encoder, not inside the model's parameters.
    variables, encoder_variables = sd_vae_encoder.split_variables(variables)
    config = dataclasses.replace(config, include_encoder=False)
    gen = sd_vae.make_generator(config, variables, name="check")
    out = jax.eval_shape(gen.apply_fn, variables, jnp.zeros((1, *gen.input_shape), jnp.float32), None)
    if tuple(out.shape[1:]) != gen.output_shape:  # pragma: no cover - guarded by the template
        raise ArchitectureError(f"{folder}: decoder emits {out.shape[1:]}, expected {gen.output_shape}")
    encoder = None
    if encoder_variables is not None:
        encoder = _converted_encoder(config, encoder_variables, folder, gen.output_shape, gen.input_shape)
    summary = {
        "class": raw.get("_class_name", "AutoencoderKL"),
        "diffusers_version": raw.get("_diffusers_version"),
        "folder": str(folder),
        "weights_files": [p.name for p in weight_files],
        "weights_dtypes": dtypes,
        "block_out_channels": list(config.block_out_channels),
        "latent_channels": config.latent_channels,
        "downsample_factor": config.downsample_factor,
        "image_size": config.sample_size,
        "latent_shape": list(gen.input_shape),
        "scaling_factor": config.scaling_factor,
        "shift_factor": config.shift_factor,
        "encoder": encoder is not None,
        "ignored_config_fields": ignored,
        "input": "scaled latent z; the decoder gets z / scaling_factor (+ shift)",
        **facts,
    }
    sources = {str(p): sha256_file(p) for p in [*weight_files, config_path]}
    return Converted("sd-vae", dataclasses.asdict(config), variables, summary, sources, encoder)


def has_encoder_tensors(state: dict[str, np.ndarray]) -> bool:
    """Whether a diffusers ``AutoencoderKL`` state dict holds any encoder tensor."""
    return any(k.startswith(_ENCODER_PREFIXES) for k in state)


def _converted_encoder(
    config: sd_vae.SDVAEConfig,
    variables: dict[str, Any],
    folder: Path,
    image_shape: tuple[int, ...],
    latent_shape: tuple[int, ...],
) -> ConvertedEncoder:
    """The VAE's encoder as the checkpoint's encoder, checked to map the decoder's images to
    its inputs (shapes traced, nothing computed)."""
    enc_config = sd_vae_encoder.encoder_config(config)
    enc = sd_vae_encoder.make_encoder(enc_config, variables)
    out = jax.eval_shape(enc.apply_fn, variables, jnp.zeros((1, *image_shape), jnp.float32), None)
    if tuple(out.shape[1:]) != tuple(latent_shape):  # pragma: no cover - guarded by the template
        raise ArchitectureError(f"{folder}: encoder emits {out.shape[1:]}, expected {latent_shape}")
    keys = ["encoder.*", "quant_conv.*"] if config.use_quant_conv else ["encoder.*"]
    provenance = {
        "source": "converted",
        "from": {"format": "sd-vae", "folder": str(folder), "keys": keys},
        "output": "posterior mean (first half of the moments), scaled like the decoder's input",
    }
    return ConvertedEncoder(sd_vae_encoder.ARCHITECTURE, enc_config, variables, provenance)


def _vae_folder(src: Path) -> Path:
    if not src.is_dir():
        raise ConversionError(f"{src}: expected a diffusers folder (save_pretrained output)")
    if not (src / "config.json").is_file() and (src / "model_index.json").is_file():
        if (src / "vae" / "config.json").is_file():
            return src / "vae"
        raise ConversionError(f"{src}: pipeline folder without a vae/ subfolder")
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json")
    return src


def _weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConversionError(f"{index}: unreadable shard index ({exc})") from exc
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConversionError(f"{index}: shards missing: {preview(missing)}")
            return files
    have = sorted(p.name for p in folder.iterdir())
    raise ConversionError(
        f"{folder}: no weights ({' or '.join(WEIGHT_FILES[:2])}); found {preview(have)}"
    )
