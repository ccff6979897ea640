"""The models of the paper's speed figures, each as a pair: a PyTorch module and the Flax
generator converted from it by the project's converters (same architecture, same random
weights), for :mod:`benchmarks.scale`.

- ``stylegan2-cifar10``: StyleGAN2-ADA at the configuration of NVlabs' CIFAR-10 checkpoint
  (``train.py --cfg=cifar``: 32x32, ``channel_base`` 32768 and ``channel_max`` 512, so 512
  feature maps at every resolution, a 2-layer mapping network, ``c_dim`` 10, ``conv_clamp``
  256). PyTorch side: :mod:`benchmarks.torch_stylegan2` (NVlabs' maths and names, the fused
  modulated convolution and the reference upfirdn2d, i.e. what NVlabs runs without its CUDA
  plugins); weights through :func:`converters.stylegan2.nvlabs_variables`. The inverted
  input is z with the image's class known, noise mode "const".
- ``cm-imagenet64``: openai's consistency-model ImageNet-64 UNet as diffusers describes it
  (``IMAGENET_64_UNET_CONFIG`` of diffusers' ``scripts/convert_consistency_to_diffusers.py``,
  copied below: 192 base channels, 3 resnets per block, attention at 32, 16 and 8, 1000
  classes, scale-shift norms, resnet resamplers) with the CD scheduler (40 train timesteps,
  sigma 0.002 to 80), one step from sigma_max, class 0. PyTorch side: ``diffusers.UNet2DModel``
  and ``CMStochasticIterativeScheduler``'s scalings; weights through
  :func:`converters.diffusers_unet.convert_unet_state_dict`.
- ``sd-vae``: Stable Diffusion v1's VAE decoder (``AutoencoderKL``: channels 128, 256, 512,
  512, 2 layers per block, 4 latent channels, scaling 0.18215) at any side that is a multiple
  of 8 (512: the LatentTracer setting). PyTorch side: ``diffusers.AutoencoderKL.decode``;
  weights through :func:`converters.sd_vae.convert_sd_vae_state_dict`.

Every builder takes ``tiny=True`` for a model of the same family small enough for CI.
PyTorch modules map inputs in PyTorch layout (flat z or NCHW) and a per-image condition to
NCHW images in [0, 1], the range the engine's generators emit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from ronan_jax.engine.generator import Generator

MODELS = ("stylegan2-cifar10", "cm-imagenet64", "sd-vae")
DEFAULT_SIZE = {"stylegan2-cifar10": 32, "cm-imagenet64": 64, "sd-vae": 512}

# diffusers scripts/convert_consistency_to_diffusers.py (openai's cd_imagenet64_l2 / lpips).
IMAGENET_64_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 3,
    "num_class_embeds": 1000,
    "block_out_channels": [192, 192 * 2, 192 * 3, 192 * 4],
    "attention_head_dim": 64,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "resnet_time_scale_shift": "scale_shift",
    "attn_norm_num_groups": 32,
    "upsample_type": "resnet",
    "downsample_type": "resnet",
}
CD_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 40, "sigma_min": 0.002, "sigma_max": 80.0}
TINY_CM_UNET: dict[str, Any] = {
    **IMAGENET_64_UNET_CONFIG,
    "sample_size": 16,
    "layers_per_block": 1,
    "num_class_embeds": 10,
    "block_out_channels": [16, 32],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "attn_norm_num_groups": 8,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"],
}
# Stable Diffusion v1 (runwayml/stable-diffusion-v1-5 vae/config.json).
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
TINY_SD_VAE: dict[str, Any] = {
    **SD_VAE_CONFIG,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 32,
}


@dataclasses.dataclass
class ModelPair:
    """One architecture in both frameworks with the same weights.

    ``torch_net(z, condition)`` takes ``z`` ``[R, *torch_input_shape]`` and one image's
    ``condition`` (``torch_condition(i)`` of image ``i``); ``engine_conditions(classes)`` are
    the engine's per-image conditions of images with those classes (None if the model has no
    per-image condition)."""

    name: str
    size: int
    generator: Generator
    torch_net: nn.Module
    torch_input_shape: tuple[int, ...]
    facts: dict[str, Any]
    num_classes: int = 0  # classes given per image (0: none, or fixed in the model)

    def engine_conditions(self, classes: np.ndarray) -> Any:
        return self.generator.conditions_for_classes(classes) if self.num_classes else None

    def torch_condition(self, label: int) -> Any:
        return int(label) if self.num_classes else None

    def classes(self, n: int, seed: int = 0) -> np.ndarray:
        """Classes of ``n`` images (all zeros for a model without per-image classes)."""
        if not self.num_classes:
            return np.zeros(n, np.int32)
        return np.random.default_rng(seed).integers(0, self.num_classes, n).astype(np.int32)

    def jax_images(self, z: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The Flax generator's images of inputs ``z`` (engine layout), one jitted call."""
        gen = self.generator
        cond = self.engine_conditions(classes)
        if cond is None:
            cond = gen.batched_condition(len(z))
        fn = jax.jit(lambda p, x, c: gen.apply_fn(p, x, c))
        return np.asarray(fn(gen.params, jnp.asarray(z), cond), np.float32)

    def torch_images(self, z: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The PyTorch module's images of the same inputs, NHWC, one image at a time."""
        out = []
        dev = next(self.torch_net.parameters()).device
        with torch.no_grad():
            for zi, k in zip(z, classes, strict=True):
                x = torch.from_numpy(np.array(to_torch_layout(zi[None]), np.float32)).to(dev)  # a writable copy
                out.append(self.torch_net(x, self.torch_condition(k)).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def to_torch_layout(z: np.ndarray) -> np.ndarray:
    """Engine inputs ``[N, H, W, C]`` -> ``[N, C, H, W]``; flat inputs unchanged."""
    return z.transpose(0, 3, 1, 2) if z.ndim == 4 else z


def max_forward_diff(pair: ModelPair, n: int, seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """Largest |Flax - PyTorch| over ``n`` prior inputs (images in [0, 1]), the Flax images
    and their classes: the check that both frameworks run the same model."""
    z = np.asarray(pair.generator.sample_inputs(jax.random.key(seed), n), np.float32)
    classes = pair.classes(n, seed)
    ours = pair.jax_images(z, classes)
    theirs = pair.torch_images(z, classes)
    return float(np.max(np.abs(ours - theirs))), ours, classes


def _frozen(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _n_params(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# ----------------------------------------------------------------------------- StyleGAN2


class TorchStyleGAN2(nn.Module):
    """NVlabs ``G(z, one_hot(class), noise_mode)`` mapped to [0, 1]."""

    def __init__(self, net: nn.Module, num_classes: int, noise_mode: str) -> None:
        super().__init__()
        self.net, self.num_classes, self.noise_mode = net, num_classes, noise_mode

    def forward(self, z: torch.Tensor, label: int | None) -> torch.Tensor:
        c = None
        if self.num_classes:
            c = torch.zeros(z.shape[0], self.num_classes, device=z.device, dtype=z.dtype)
            c[:, int(label)] = 1.0
        img = self.net(z, c, noise_mode=self.noise_mode)
        return ((img + 1.0) / 2.0).clamp(0.0, 1.0)


def stylegan2_cifar10(size: int = 32, tiny: bool = False, seed: int = 0) -> ModelPair:
    """StyleGAN2-ADA at NVlabs' CIFAR-10 configuration (``tiny``: 16 channels, 16x16, 3
    classes), random weights in both frameworks."""
    from benchmarks import torch_stylegan2 as ts
    from converters.stylegan2 import nvlabs_variables
    from ronan_jax.models import stylegan2 as sg

    res = 16 if tiny else size
    dim, classes, cmax = (16, 3, 16) if tiny else (512, 10, 512)
    base = cmax * res // 2 if tiny else 32768
    net = ts.randomize(ts.Generator(dim, classes, dim, res, 3, mapping_kwargs=dict(num_layers=2),
                                    synthesis_kwargs=dict(channel_base=base, channel_max=cmax, conv_clamp=256)),
                       seed=seed)
    cfg = sg.StyleGAN2Config(z_dim=dim, w_dim=dim, num_classes=classes, img_resolution=res, mapping_layers=2,
                             channel_base=base, channel_max=cmax, conv_clamp=256.0, num_fp16_res=4,
                             noise_mode="const")
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    gen = sg.make_generator(cfg, nvlabs_variables(state, cfg, "torch StyleGAN2"), name="stylegan2-cifar10")
    facts = {"architecture": "stylegan2", "config": dataclasses.asdict(cfg), "torch_params": _n_params(net),
             "input": f"z ({dim},), class known, noise const",
             "torch": "benchmarks.torch_stylegan2 (fused modulated conv, reference upfirdn2d)"}
    return ModelPair("stylegan2-cifar10", res, gen, _frozen(TorchStyleGAN2(net, classes, "const")),
                     (dim,), facts, num_classes=classes)


# ----------------------------------------------------------------------------- consistency


class TorchConsistency(nn.Module):
    """One consistency step from sigma_max, as ``ConsistencyModelPipeline`` takes it:
    ``denoised = c_out * unet(x * c_in, t, class) + c_skip * x``, clipped, to [0, 1];
    ``x = z * sigma_max`` for unit-variance ``z`` (the engine's input)."""

    def __init__(self, unet: nn.Module, scheduler: Any, class_label: int) -> None:
        super().__init__()
        scheduler.set_timesteps(1)
        sigma = scheduler.sigmas[0]
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition(sigma)
        sd = scheduler.config.sigma_data
        self.unet = unet
        self.sigma, self.c_skip, self.c_out = float(sigma), float(c_skip), float(c_out)
        self.c_in = float(1.0 / (float(sigma) ** 2 + sd**2) ** 0.5)
        self.t = scheduler.timesteps[0].float()  # a float tensor: a Python float would be cast to long
        self.class_label = class_label

    def forward(self, z: torch.Tensor, label: int | None = None) -> torch.Tensor:
        x = z * self.sigma
        labels = torch.full((z.shape[0],), self.class_label, dtype=torch.long, device=z.device)
        out = self.unet(x * self.c_in, self.t.to(z.device), class_labels=labels).sample
        denoised = (self.c_out * out + self.c_skip * x).clamp(-1.0, 1.0)
        return (denoised / 2.0 + 0.5).clamp(0.0, 1.0)


def consistency_imagenet64(size: int = 64, tiny: bool = False, seed: int = 0) -> ModelPair:
    """openai's CM ImageNet-64 architecture (diffusers config), one step, class 0, random
    (diffusers' default initialisation) weights; any side that is a multiple of 8."""
    import diffusers

    from converters.diffusers_unet import convert_unet_state_dict
    from ronan_jax.models import diffusion, unet2d

    raw = TINY_CM_UNET if tiny else IMAGENET_64_UNET_CONFIG
    torch.manual_seed(seed)
    unet = _frozen(diffusers.UNet2DModel(**raw))
    cfg = unet2d.UNet2DConfig.from_dict(raw)
    variables = convert_unet_state_dict({k: v.numpy() for k, v in unet.state_dict().items()}, cfg)
    ccfg = diffusion.ConsistencyConfig(unet=cfg, scheduler=diffusion.CMSchedulerConfig(**CD_SCHEDULER_CONFIG),
                                       num_inference_steps=1, class_label=0)
    gen = diffusion.make_consistency_generator(ccfg, variables, name="cm-imagenet64")
    res = 16 if tiny else size
    if gen.output_shape[0] != res:
        gen = gen.for_shape((res, res, 3))
    scheduler = diffusers.CMStochasticIterativeScheduler(**CD_SCHEDULER_CONFIG)
    facts = {"architecture": "consistency", "config": ccfg.to_dict(), "torch_params": _n_params(unet),
             "input": f"unit noise z ({res}, {res}, 3), x_T = 80 z, one step, class 0",
             "torch": f"diffusers {diffusers.__version__} UNet2DModel + CMStochasticIterativeScheduler scalings",
             "remat": ccfg.remat}
    return ModelPair("cm-imagenet64", res, gen, _frozen(TorchConsistency(unet, scheduler, 0)),
                     (3, res, res), facts)


# ----------------------------------------------------------------------------- SD VAE


class TorchVAEDecoder(nn.Module):
    """``AutoencoderKL.decode(z / scaling_factor)`` mapped to [0, 1], as the pipelines do."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)

    def forward(self, z: torch.Tensor, label: int | None = None) -> torch.Tensor:
        out = self.vae.decode(z / self.scale).sample
        return (out / 2.0 + 0.5).clamp(0.0, 1.0)


def sd_vae(size: int = 512, tiny: bool = False, seed: int = 0) -> ModelPair:
    """Stable Diffusion v1's VAE decoder at ``size`` x ``size`` (``tiny``: 2 blocks of 8 and
    16 channels, 32x32), random (diffusers' default initialisation) weights."""
    import diffusers

    from converters.sd_vae import convert_sd_vae_state_dict, sd_vae_config
    from ronan_jax.models import sd_vae as flax_vae

    raw = TINY_SD_VAE if tiny else SD_VAE_CONFIG
    res = int(raw["sample_size"]) if tiny else size
    torch.manual_seed(seed)
    vae = _frozen(diffusers.AutoencoderKL(**raw))
    cfg, _ = sd_vae_config({"_class_name": "AutoencoderKL", **raw}, image_size=res, include_encoder=False)
    variables, _ = convert_sd_vae_state_dict({k: v.numpy() for k, v in vae.state_dict().items()}, cfg)
    gen = flax_vae.make_generator(cfg, variables, name="sd-vae", image_shape=(res, res))
    lat = gen.input_shape
    facts = {"architecture": "sd-vae", "config": dataclasses.asdict(cfg), "torch_params": _n_params(vae.decoder)
             + _n_params(vae.post_quant_conv), "input": f"scaled latent {lat}",
             "torch": f"diffusers {diffusers.__version__} AutoencoderKL.decode"}
    return ModelPair("sd-vae", res, gen, _frozen(TorchVAEDecoder(vae)), (lat[2], lat[0], lat[1]), facts)


BUILDERS: dict[str, Callable[..., ModelPair]] = {
    "stylegan2-cifar10": stylegan2_cifar10,
    "cm-imagenet64": consistency_imagenet64,
    "sd-vae": sd_vae,
}


def build(name: str, size: int | None = None, tiny: bool = False) -> ModelPair:
    """The pair ``name`` (one of :data:`MODELS`) at ``size`` (default: the paper's)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return BUILDERS[name](size=size or DEFAULT_SIZE[name], tiny=tiny)
