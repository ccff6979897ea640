"""Test data shared by the PyTorch-side tests: tiny diffusers UNet configurations and a
``torch.save`` that tags storages as a GPU machine does."""

from __future__ import annotations

from typing import Any

TINY_UNET: dict[str, Any] = dict(
    sample_size=16,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
)
CM_LAYOUT: dict[str, Any] = dict(  # openai consistency-model layout: resnet samplers, scale-shift, classes
    num_class_embeds=10,
    resnet_time_scale_shift="scale_shift",
    down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    downsample_type="resnet",
    upsample_type="resnet",
)


def save_cuda_tagged(obj: Any, path: Any, legacy: bool) -> None:
    """torch.save as on a GPU machine: every storage's location tag says 'cuda:0'."""
    import torch

    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    finally:
        torch.serialization.location_tag = original
