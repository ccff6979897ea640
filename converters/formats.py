"""The source formats ``converters`` can convert, importable without torch, JAX or NumPy.

A command-line parser (``ronan convert --format``) or any other light caller can offer the
choice without paying for the converters' imports; :data:`converters.api.CONVERTERS`
dispatches exactly these formats, in this order.
"""

from __future__ import annotations

__all__ = ["FORMATS"]

FORMATS: tuple[str, ...] = (
    "dcgan", "sd-vae", "diffusers-unet", "consistency", "stylegan-pickle", "stylegan-rosinality",
)
"""``dcgan``: a pytorch/examples DCGAN generator state-dict file; ``sd-vae``: a diffusers
``AutoencoderKL`` folder (or a latent-diffusion pipeline's ``vae/``); ``diffusers-unet``: a
diffusers ``UNet2DModel`` or DDPM/DDIM pipeline folder; ``consistency``: a diffusers
consistency-model folder."""
