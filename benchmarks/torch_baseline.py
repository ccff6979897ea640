"""The authors' algorithm written plainly in PyTorch: the speed benchmark's baseline.

One image at a time; its R restarts are one batch; ``torch.optim.Adam`` on the input only
(the generator is frozen: ``requires_grad`` off on every weight, eval-mode BatchNorm); the
loss is the per-restart MSE, summed over restarts; strategy "min" is a running minimum kept
on the device (``torch.minimum`` each step, one host copy at the end, no ``.item()`` per
step). After the last update the final input is measured too, as ronan-jax does.

The generator is the *same* model as the JAX one: :func:`export_dcgan` writes Flax DCGAN
variables into a pytorch/examples ``nn.Sequential`` (the inverse of ``converters.layout``:
a ConvTranspose kernel ``(kh, kw, Cin, Cout)`` becomes ``weight (Cin, Cout, kh, kw)`` by
``transpose(2, 3, 0, 1)``; BatchNorm scale/bias/mean/var copy over), and
:func:`max_output_diff` checks the two agree before anything is timed.

torch is imported here and in tests only, never by ``ronan_jax``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ronan_jax.models.dcgan import DCGANConfig


def torch_device() -> torch.device:
    """CUDA if available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_all_threads() -> int:
    """``torch.set_num_threads(os.cpu_count())``; returns the thread count."""
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def dcgan_sequential(config: DCGANConfig) -> nn.Sequential:
    """The pytorch/examples DCGAN generator (``main.N`` layout) for an unconditional config."""
    if config.num_classes:
        raise ValueError("the torch baseline supports unconditional DCGANs only")
    if config.resize_to and config.resize_to != config.image_size:
        raise ValueError("the torch baseline does not model resize_to")
    layers: list[nn.Module] = []
    cin = config.nz
    for i in range(config.depth):
        last = i == config.depth - 1
        cout = config.nc if last else config.ngf * 2 ** (config.depth - 2 - i)
        stride, pad = (1, 0) if i == 0 else (2, 1)
        layers.append(nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False))
        if last:
            layers.append(nn.Tanh())
        else:
            if config.batchnorm:
                layers.append(nn.BatchNorm2d(cout, eps=1e-5))
            layers.append(nn.ReLU(True))
        cin = cout
    return nn.Sequential(*layers)


def dcgan_state_dict(variables: Any, config: DCGANConfig) -> dict[str, torch.Tensor]:
    """Flax DCGAN variables -> a ``dcgan_sequential`` state dict (keys ``N.weight`` ...)."""
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    out: dict[str, torch.Tensor] = {}
    idx = 0
    for i in range(config.depth):
        kernel = np.asarray(params[f"convt_{i}"]["kernel"], np.float32)
        out[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)))
        idx += 1
        if i == config.depth - 1:
            break
        if config.batchnorm:
            bn_p, bn_s = params[f"bn_{i}"], stats[f"bn_{i}"]
            for name, value in (
                ("weight", bn_p["scale"]),
                ("bias", bn_p["bias"]),
                ("running_mean", bn_s["mean"]),
                ("running_var", bn_s["var"]),
            ):
                out[f"{idx}.{name}"] = torch.from_numpy(np.array(value, np.float32))
            out[f"{idx}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
            idx += 1
        idx += 1  # ReLU
    return out


def export_dcgan(variables: Any, config: DCGANConfig, device: torch.device | None = None) -> nn.Sequential:
    """The Flax DCGAN as a frozen, eval-mode PyTorch ``nn.Sequential`` on ``device``."""
    net = dcgan_sequential(config)
    net.load_state_dict(dcgan_state_dict(variables, config), strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device or torch_device())


def to_unit(out: torch.Tensor) -> torch.Tensor:
    """tanh output -> [0, 1], as the JAX generator maps it ((x + 1) / 2, clipped)."""
    return ((out + 1.0) / 2.0).clamp(0.0, 1.0)


def max_output_diff(generator: Any, net: nn.Sequential, n: int = 8, seed: int = 0) -> float:
    """Largest |JAX - PyTorch| over ``n`` random inputs, images in [0, 1] (NHWC vs NCHW)."""
    import jax

    z = np.array(generator.sample_inputs(jax.random.key(seed), n), np.float32)  # writable copy
    ours = np.asarray(generator(z), np.float32)
    dev = next(net.parameters()).device
    with torch.no_grad():
        theirs = to_unit(net(torch.from_numpy(z).reshape(n, -1, 1, 1).to(dev)))
    theirs = theirs.permute(0, 2, 3, 1).cpu().numpy()
    return float(np.max(np.abs(ours - theirs)))


def make_loss_fn(net: nn.Module, compile_model: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(z [R, nz, 1, 1], target [1, C, H, W]) -> per-restart MSE [R]``; with
    ``compile_model`` the function goes through ``torch.compile`` (forward and, via
    AOTAutograd, its input-gradient backward)."""

    def losses(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (to_unit(net(z)) - target).square().mean(dim=(1, 2, 3))

    if compile_model:
        return torch.compile(losses, dynamic=False)
    return losses


def image_target(image_hwc: np.ndarray, device: torch.device) -> torch.Tensor:
    """One ``[H, W, C]`` image in [0, 1] as the ``[1, C, H, W]`` float32 target."""
    target = torch.from_numpy(np.ascontiguousarray(np.asarray(image_hwc, np.float32).transpose(2, 0, 1)))
    return target.unsqueeze(0).to(device)


def start_inputs(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """The R restarts' starting inputs, N(0, I), from a seeded torch generator."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=device)


def adam_min_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    lr: float,
) -> float:
    """The authors' loop on one image: Adam on its restarts ``z`` (one batch) for ``steps``
    steps on the summed per-restart losses ``loss_fn(z, target)``; the smallest loss seen,
    the input after the last update measured too (a running minimum kept on the device)."""
    z = z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best = torch.full((z.shape[0],), float("inf"), device=z.device)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        losses = loss_fn(z, target)
        best = torch.minimum(best, losses.detach())
        losses.sum().backward()
        opt.step()
    with torch.no_grad():
        best = torch.minimum(best, loss_fn(z, target))
    return float(best.min().cpu())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass
class TorchInverter:
    """Per-image RONAN inversion of a frozen PyTorch generator (the authors' loop)."""

    net: nn.Module
    nz: int
    restarts: int = 8
    lr: float = 0.1
    compile_model: bool = False

    def __post_init__(self) -> None:
        self.device = next(self.net.parameters()).device
        self.loss_fn = make_loss_fn(self.net, self.compile_model)

    def invert_one(self, image_hwc: np.ndarray, steps: int, seed: int = 0) -> float:
        """Strategy "min" loss of one ``[H, W, C]`` image in [0, 1] after ``steps`` steps."""
        target = image_target(image_hwc, self.device)
        z = start_inputs((self.restarts, self.nz, 1, 1), seed, self.device)
        return adam_min_loss(self.loss_fn, z, target, steps, self.lr)

    def invert(self, images: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
        """Images one at a time (the baseline's defining property); per-image min losses."""
        return np.array([self.invert_one(img, steps, seed + i) for i, img in enumerate(images)])

    def timed(self, images: np.ndarray, steps: int) -> float:
        """Wall seconds per image of :meth:`invert` (device synchronised)."""
        synchronize(self.device)
        t0 = time.perf_counter()
        self.invert(images, steps)
        synchronize(self.device)
        return (time.perf_counter() - t0) / len(images)


@dataclasses.dataclass
class PerImageLoop:
    """The authors' loop for any frozen generator module ``net(z, condition)`` that maps
    ``[R, *input_shape]`` inputs (and one image's condition) to ``[R, C, H, W]`` images in
    [0, 1]: one image at a time, its R restarts as one batch, ``torch.optim.Adam`` on the
    input. ``autocast`` (e.g. ``torch.bfloat16``) runs the generator under
    ``torch.autocast``, the inputs, loss and Adam staying float32 (as the engine's
    bfloat16 setting does)."""

    net: nn.Module
    input_shape: tuple[int, ...]
    restarts: int = 8
    lr: float = 0.1
    autocast: torch.dtype | None = None

    def __post_init__(self) -> None:
        self.device = next(self.net.parameters()).device

    def loss_fn(self, condition: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(z, target) -> per-restart MSE [R]`` (float32) of one image's condition."""

        def losses(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                images = self.net(z, condition)
            return (images.float() - target).square().mean(dim=(1, 2, 3))

        return losses

    def invert_one(self, image_hwc: np.ndarray, condition: Any, steps: int, seed: int = 0) -> float:
        """Strategy "min" loss of one ``[H, W, C]`` image after ``steps`` steps."""
        z = start_inputs((self.restarts, *self.input_shape), seed, self.device)
        return adam_min_loss(self.loss_fn(condition), z, image_target(image_hwc, self.device), steps, self.lr)

    def invert(self, images: np.ndarray, conditions: list[Any], steps: int, seed: int = 0) -> np.ndarray:
        """Images one at a time; per-image min losses (device synchronised at the end)."""
        out = np.array([self.invert_one(img, c, steps, seed + i)
                        for i, (img, c) in enumerate(zip(images, conditions, strict=True))])
        synchronize(self.device)
        return out

    def measure_once(self, image_hwc: np.ndarray, condition: Any) -> None:
        """One no-grad evaluation of the R restarts: the per-image work outside the step
        loop (the final inputs' losses), timed apart so the step time can be told from it."""
        z = start_inputs((self.restarts, *self.input_shape), 0, self.device)
        with torch.no_grad():
            self.loss_fn(condition)(z, image_target(image_hwc, self.device))
        synchronize(self.device)
