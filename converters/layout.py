"""Tensor layout rules from PyTorch to the Flax modules of ``ronan_jax.models``.

Every converter uses these and only these; each rule is tested against the PyTorch layer it
mirrors. All functions take and return NumPy arrays (no torch needed here).
"""

from __future__ import annotations

import numpy as np


def linear(weight: np.ndarray) -> np.ndarray:
    """``nn.Linear.weight`` (out, in) -> Flax ``Dense.kernel`` (in, out).

    Also accepts a 1x1 convolution weight (out, in, 1, 1), which old diffusers attention
    blocks used for their projections."""
    if weight.ndim == 4 and weight.shape[2:] == (1, 1):
        weight = weight[:, :, 0, 0]
    if weight.ndim != 2:
        raise ValueError(f"linear weight must be 2-D, got shape {weight.shape}")
    return np.ascontiguousarray(weight.T)


def conv2d(weight: np.ndarray) -> np.ndarray:
    """``nn.Conv2d.weight`` (O, I, kh, kw) -> Flax ``Conv.kernel`` (kh, kw, I, O)."""
    if weight.ndim != 4:
        raise ValueError(f"conv weight must be 4-D, got shape {weight.shape}")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def conv_transpose2d(weight: np.ndarray) -> np.ndarray:
    """``nn.ConvTranspose2d.weight`` (I, O, kh, kw) -> ``ronan_jax.models.layers.ConvTranspose``
    kernel (kh, kw, I, O), the scatter layout (no spatial flip: the layer flips itself)."""
    if weight.ndim != 4:
        raise ValueError(f"transposed-conv weight must be 4-D, got shape {weight.shape}")
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1))


def norm(weight: np.ndarray | None, bias: np.ndarray | None) -> dict[str, np.ndarray]:
    """Group/Layer/BatchNorm affine ``weight``/``bias`` -> Flax ``scale``/``bias``."""
    out = {}
    if weight is not None:
        out["scale"] = np.asarray(weight)
    if bias is not None:
        out["bias"] = np.asarray(bias)
    return out


def batchnorm_stats(running_mean: np.ndarray, running_var: np.ndarray) -> dict[str, np.ndarray]:
    """BatchNorm running statistics -> Flax ``batch_stats`` entries ``mean``/``var``."""
    return {"mean": np.asarray(running_mean), "var": np.asarray(running_var)}
