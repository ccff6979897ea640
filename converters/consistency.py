"""Consistency models (diffusers ``UNet2DModel`` + ``CMStochasticIterativeScheduler``, e.g.
openai's ``diffusers-cd_imagenet64_l2``) -> the ``"consistency"`` generator.

Sources as :mod:`converters.diffusers_unet` (a UNet folder or a ``ConsistencyModelPipeline``
folder). The scheduler config (``scheduler=``; default: the pipeline's, else the scheduler's
defaults sigma_min 0.002, sigma_max 80, sigma_data 0.5, rho 7, 40 train timesteps) must be a
``CMStochasticIterativeScheduler`` config. The generator's input is unit-variance noise, scaled
by ``sigma_max`` inside (see :mod:`ronan_jax.models.diffusion`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converters.base import Converted, sha256_file
from converters.diffusers_unet import (
    convert_unet_state_dict,
    pipeline_parts,
    read_scheduler_config,
    read_unet_folder,
)
from converters.errors import ArchitectureError, ConversionError
from ronan_jax.models import diffusion

__all__ = ["convert_consistency"]

SCHEDULER_CLASS = "CMStochasticIterativeScheduler"


def convert_consistency(
    src: str | Path,
    *,
    scheduler: str | Path | Mapping[str, Any] | None = None,
    timesteps: Sequence[int] | None = None,
    num_inference_steps: int = 1,
    class_label: int | None = None,
    noise_seed: int = 0,
) -> Converted:
    """A ``"consistency"`` generator from a diffusers consistency-model folder.

    Args:
        src: UNet folder or pipeline folder.
        scheduler: ``CMStochasticIterativeScheduler`` config (folder, JSON file or dict).
        timesteps: custom descending timesteps for multistep sampling (e.g. ``[22, 0]``);
            overrides ``num_inference_steps``.
        num_inference_steps: steps when ``timesteps`` is not given (default 1: one-step
            generation, deterministic).
        class_label: fixed class of a class-conditional UNet (``num_class_embeds``).
        noise_seed: seed of the fixed noise injected between steps (multistep only).
    """
    src = Path(src)
    unet_dir, pipe_sched = pipeline_parts(src)
    unet_cfg, _, state, facts = read_unet_folder(unet_dir)
    sched_raw, sched_from, sched_files = read_scheduler_config(scheduler, pipe_sched)
    sched_cls = sched_raw.get("_class_name")
    if sched_cls not in (None, SCHEDULER_CLASS):
        raise ArchitectureError(
            f"{sched_from}: scheduler {sched_cls!r} is not a {SCHEDULER_CLASS} config; "
            "DDPM/DDIM models convert with converters.diffusers_unet"
        )
    try:
        cfg = diffusion.ConsistencyConfig(
            unet=unet_cfg,
            scheduler=diffusion.CMSchedulerConfig.from_dict(sched_raw),
            timesteps=None if timesteps is None else tuple(int(t) for t in timesteps),
            num_inference_steps=int(num_inference_steps),
            class_label=None if class_label is None else int(class_label),
            noise_seed=int(noise_seed),
        )
        schedule = cfg.schedule
        diffusion.fixed_condition(unet_cfg, cfg.class_label)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{src}: {exc}") from exc
    variables = convert_unet_state_dict(state, unet_cfg, str(unet_dir / facts["weights_file"]))
    files = [*facts.pop("files"), *sched_files]
    summary = {
        **facts,
        "scheduler_class": sched_cls,
        "scheduler_source": sched_from,
        "sigmas": [float(s) for s in schedule.sigmas],
        "model_timesteps": [float(t) for t in schedule.timesteps],
        "image_shape": [*unet_cfg.image_hw, unet_cfg.out_channels] if unet_cfg.sample_size else None,
    }
    return Converted(
        architecture="consistency",
        config=cfg.to_dict(),
        variables=variables,
        summary=summary,
        sources={str(p): sha256_file(p) for p in files},
    )
