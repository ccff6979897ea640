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

from converters.base import Converted
from converters.diffusers_unet import read_unet_source, unet_converted
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
    source = read_unet_source(src, scheduler)
    if source.scheduler_class not in (None, SCHEDULER_CLASS):
        raise ArchitectureError(
            f"{source.scheduler_source}: scheduler {source.scheduler_class!r} is not a "
            f"{SCHEDULER_CLASS} config; DDPM/DDIM models convert with converters.diffusers_unet"
        )
    try:
        cfg = diffusion.ConsistencyConfig(
            unet=source.config,
            scheduler=diffusion.CMSchedulerConfig.from_dict(source.scheduler),
            timesteps=None if timesteps is None else tuple(int(t) for t in timesteps),
            num_inference_steps=int(num_inference_steps),
            class_label=None if class_label is None else int(class_label),
            noise_seed=int(noise_seed),
        )
        schedule = cfg.schedule
        diffusion.fixed_condition(source.config, cfg.class_label)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{src}: {exc}") from exc
    return unet_converted(
        source,
        "consistency",
        cfg.to_dict(),
        {
            "sigmas": [float(s) for s in schedule.sigmas],
            "model_timesteps": [float(t) for t in schedule.timesteps],
        },
    )
