"""diffusers ``UNet2DModel`` folders -> ``ronan_jax.models.unet2d`` variables, and the
``"unet-ddim"`` generator (UNet + deterministic DDIM sampler).

Accepted sources (what ``save_pretrained`` writes):

* a UNet folder: ``config.json`` (``_class_name`` ``UNet2DModel``) and
  ``diffusion_pytorch_model.safetensors`` (or ``.bin``);
* a pipeline folder (``model_index.json``) with ``unet/`` and ``scheduler/`` sub-folders, e.g.
  ``DDPMPipeline``/``DDIMPipeline.save_pretrained``; its scheduler config is used unless one is
  given.

The scheduler config (``scheduler=``: a folder holding ``scheduler_config.json``, a JSON file,
or a dict; default: the pipeline's, else ``DDIMScheduler``'s defaults) is read as
``DDIMScheduler.from_config`` reads it, so DDPM/PNDM configs of the same model work; keys that
eta = 0 DDIM does not use are recorded in the summary.

Weights are mapped by an explicit key-map table (:func:`unet_key_map`): one row per tensor,
built from the layer and block tables of :mod:`converters.keymap` (``RESNET``, ``ATTENTION``,
...) placed by the same channel plan the Flax module uses
(``unet2d.down_block_specs``/``up_block_specs``). Every missing and every unused key is listed
in one :class:`KeyMismatchError`; shapes are then checked against a freshly initialised Flax tree. Old checkpoints' attention names
(``query``/``key``/``value``/``proj_attn``, which diffusers renames on load) are accepted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from converters.base import Converted, fill_template, sha256_file
from converters.errors import ArchitectureError, ConversionError, preview
from converters.keymap import (
    CONV,
    EMBED,
    FOURIER,
    LINEAR,
    NORM,
    KeyRule,
    attention_rules,
    layer_rules,
    map_tensors,
    resnet_rules,
)
from converters.readers import TensorTable, load_state_dict
from ronan_jax.models import diffusion, unet2d
from ronan_jax.models.unet2d import UNet2DConfig

__all__ = [
    "UNetSource",
    "convert_unet",
    "convert_unet_state_dict",
    "pipeline_parts",
    "read_scheduler_config",
    "read_unet_folder",
    "read_unet_source",
    "unet_converted",
    "unet_key_map",
]


def _block_rules(prefix: str, spec: unet2d.BlockSpec, kind: str) -> list[KeyRule]:
    rules: list[KeyRule] = []
    for j, channels in enumerate(spec.resnets):
        rules += resnet_rules(f"{prefix}.resnets.{j}", channels, time_embedding=True)
        if spec.attention:
            rules += attention_rules(f"{prefix}.attentions.{j}", group_norm=True)
    sampler = f"{prefix}.{kind}samplers.0"
    if spec.sampler == "conv":
        rules += layer_rules(f"{sampler}.conv", CONV)
    elif spec.sampler == "resnet":
        channels = (spec.out_channels, spec.out_channels)
        rules += resnet_rules(sampler, channels, time_embedding=True)
    return rules


def unet_key_map(config: UNet2DConfig) -> list[KeyRule]:
    """Every tensor of a ``UNet2DModel`` with this config, one rule each."""
    rules = layer_rules("conv_in", CONV)
    if config.time_embedding_type == "fourier":
        rules += layer_rules("time_proj", FOURIER)
    rules += layer_rules("time_embedding.linear_1", LINEAR)
    rules += layer_rules("time_embedding.linear_2", LINEAR)
    if config.num_class_embeds is not None:
        rules += layer_rules("class_embedding", EMBED)
    for i, spec in enumerate(unet2d.down_block_specs(config)):
        rules += _block_rules(f"down_blocks.{i}", spec, "down")
    for i, spec in enumerate(unet2d.up_block_specs(config)):
        rules += _block_rules(f"up_blocks.{i}", spec, "up")
    if config.mid_block_type is not None:
        ch = config.block_out_channels[-1]
        rules += resnet_rules("mid_block.resnets.0", (ch, ch), time_embedding=True)
        if config.add_attention:
            rules += attention_rules(
                "mid_block.attentions.0", group_norm=config.mid_attention_groups is not None
            )
        rules += resnet_rules("mid_block.resnets.1", (ch, ch), time_embedding=True)
    rules += layer_rules("conv_norm_out", NORM)
    rules += layer_rules("conv_out", CONV)
    return rules


def convert_unet_state_dict(
    state: Mapping[str, np.ndarray], config: UNet2DConfig, source: str = "state dict"
) -> dict[str, Any]:
    """Flax variables of ``unet2d.UNet2D(config)`` from a diffusers state dict (NumPy).

    Raises ``KeyMismatchError`` listing missing/unused keys, ``ArchitectureError`` for
    shapes that do not fit, and its ``NonFiniteTensorError`` for NaN or infinite tensors."""
    table = TensorTable(state, source)
    values = map_tensors(table, unet_key_map(config), source)
    table.finish()
    shapes = jax.eval_shape(lambda: unet2d.init_variables(config, jax.random.key(0)))
    template = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return fill_template(template, values, source)


# ----------------------------------------------------------------------------- folders

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read JSON ({exc})") from exc


def pipeline_parts(src: Path) -> tuple[Path, Path | None]:
    """(UNet folder, pipeline scheduler config or None) of a UNet or pipeline folder."""
    if not src.is_dir():
        raise ConversionError(f"{src}: not a folder (expected a diffusers save_pretrained folder)")
    if (src / "model_index.json").is_file():
        unet_dir = src / "unet"
        if not unet_dir.is_dir():
            raise ArchitectureError(f"{src}: pipeline folder without a unet/ sub-folder")
        sched = src / "scheduler" / "scheduler_config.json"
        return unet_dir, sched if sched.is_file() else None
    return src, None


def read_unet_folder(
    src: str | Path,
) -> tuple[UNet2DConfig, dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Config, raw ``config.json``, state dict and facts (files, dtypes) of a UNet folder."""
    unet_dir = Path(src)
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{unet_dir}: no config.json (not a diffusers model folder)")
    raw = _read_json(cfg_path)
    cls = raw.get("_class_name")
    if cls != "UNet2DModel":
        raise ArchitectureError(f"{cfg_path}: _class_name {cls!r}, expected 'UNet2DModel'")
    try:
        config = UNet2DConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"{cfg_path}: {exc}") from exc
    weights = next((unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if weights is None:
        have = sorted(p.name for p in unet_dir.iterdir())
        raise ConversionError(
            f"{unet_dir}: no {' or '.join(WEIGHT_FILES)} (found {preview(have)}); sharded "
            "and variant checkpoints are not read"
        )
    state = load_state_dict(weights)
    dtypes = sorted({str(v.dtype) for v in state.values()})
    facts = {
        "class_name": cls,
        "diffusers_version": raw.get("_diffusers_version"),
        "weights_file": weights.name,
        "weights_dtypes": dtypes,
        "files": [weights, cfg_path],  # weights first: the source's SHA-256 in the card
    }
    return config, raw, state, facts


def read_scheduler_config(
    scheduler: str | Path | Mapping[str, Any] | None, fallback: Path | None
) -> tuple[dict[str, Any], str, list[Path]]:
    """The scheduler config dict, where it came from, and the files read."""
    if isinstance(scheduler, Mapping):
        return dict(scheduler), "given", []
    if scheduler is not None:
        path = Path(scheduler)
        if path.is_dir():
            path = path / "scheduler_config.json"
        if not path.is_file():
            raise ConversionError(f"{scheduler}: no scheduler config there")
        return _read_json(path), str(path), [path]
    if fallback is not None:
        return _read_json(fallback), str(fallback), [fallback]
    return {}, "defaults", []


@dataclasses.dataclass(frozen=True)
class UNetSource:
    """A UNet or pipeline folder read for conversion, and the scheduler config to go with it
    (what :func:`convert_unet` and ``converters.consistency`` both start from)."""

    unet_dir: Path
    config: UNet2DConfig
    state: dict[str, np.ndarray]
    facts: dict[str, Any]  # class_name, diffusers_version, weights_file, weights_dtypes
    files: list[Path]  # every file read, the weights first (the card's source SHA-256)
    scheduler: dict[str, Any]
    scheduler_source: str

    @property
    def scheduler_class(self) -> str | None:
        """The scheduler config's ``_class_name`` (None when it names none)."""
        return self.scheduler.get("_class_name")


def read_unet_source(
    src: str | Path, scheduler: str | Path | Mapping[str, Any] | None
) -> UNetSource:
    """The UNet of a UNet or pipeline folder and its scheduler config (``scheduler``, else
    the pipeline's, else none: the caller's defaults); nothing is converted yet."""
    unet_dir, pipe_sched = pipeline_parts(Path(src))
    config, _, state, facts = read_unet_folder(unet_dir)
    sched_raw, sched_from, sched_files = read_scheduler_config(scheduler, pipe_sched)
    files = [*facts.pop("files"), *sched_files]
    return UNetSource(unet_dir, config, state, facts, files, sched_raw, sched_from)


def unet_converted(
    source: UNetSource, architecture: str, config: dict[str, Any], summary: dict[str, Any]
) -> Converted:
    """The :class:`Converted` generator ``architecture`` around ``source``'s UNet: its
    variables, and a summary of the folder's facts, the scheduler, ``summary`` and the image
    shape."""
    unet = source.config
    weights = str(source.unet_dir / source.facts["weights_file"])
    variables = convert_unet_state_dict(source.state, unet, weights)
    return Converted(
        architecture=architecture,
        config=config,
        variables=variables,
        summary={
            **source.facts,
            "scheduler_class": source.scheduler_class,
            "scheduler_source": source.scheduler_source,
            **summary,
            "image_shape": [*unet.image_hw, unet.out_channels] if unet.sample_size else None,
        },
        sources={str(p): sha256_file(p) for p in source.files},
    )


DDIM_COMPATIBLE = (None, "DDIMScheduler", "DDPMScheduler", "PNDMScheduler")


def convert_unet(
    src: str | Path,
    *,
    scheduler: str | Path | Mapping[str, Any] | None = None,
    num_inference_steps: int = 50,
    class_label: int | None = None,
) -> Converted:
    """A ``"unet-ddim"`` generator from a diffusers UNet2DModel (or pipeline) folder.

    Args:
        src: UNet folder or pipeline folder (see the module docstring).
        scheduler: scheduler config (folder, JSON file or dict); default: the pipeline's,
            else ``DDIMScheduler()``'s defaults.
        num_inference_steps: DDIM steps ``K`` (DDIMPipeline's default 50; inversion costs
            ``K`` UNet evaluations per Adam step, so small ``K`` is much faster).
        class_label: fixed class of a class-conditional UNet (``num_class_embeds``).
    """
    src = Path(src)
    source = read_unet_source(src, scheduler)
    if source.scheduler_class not in DDIM_COMPATIBLE:
        raise ArchitectureError(
            f"{source.scheduler_source}: scheduler {source.scheduler_class!r} is not a "
            f"DDIM-compatible config (accepted: {', '.join(c for c in DDIM_COMPATIBLE if c)}); "
            "consistency models convert with converters.consistency"
        )
    try:
        sched_cfg, ignored = diffusion.DDIMSchedulerConfig.from_dict(source.scheduler)
        cfg = diffusion.DDIMConfig(
            unet=source.config,
            scheduler=sched_cfg,
            num_inference_steps=int(num_inference_steps),
            class_label=None if class_label is None else int(class_label),
        )
        diffusion.ddim_schedule(sched_cfg, cfg.num_inference_steps)
        diffusion.fixed_condition(source.config, cfg.class_label)
    except ValueError as exc:
        raise ConversionError(f"{src}: {exc}") from exc
    return unet_converted(
        source,
        "unet-ddim",
        cfg.to_dict(),
        {"ignored_scheduler_keys": ignored, "num_inference_steps": cfg.num_inference_steps},
    )
