"""``converters.layout`` rules checked numerically against the PyTorch layers they mirror."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from torch import nn as tnn

from converters import layout
from ronan_jax.models.layers import conv_transpose

torch.set_num_threads(1)
ATOL = 1e-5


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("as_conv1x1", [False, True])
def test_linear(as_conv1x1):
    torch.manual_seed(0)
    lin = tnn.Linear(6, 5)
    x = np.random.RandomState(0).randn(3, 6).astype(np.float32)
    weight = lin.weight.detach().numpy()
    if as_conv1x1:
        weight = weight[:, :, None, None]
    params = {"params": {"kernel": layout.linear(weight), "bias": lin.bias.detach().numpy()}}
    out = nn.Dense(5).apply(params, jnp.asarray(x))
    assert np.abs(np.asarray(out) - lin(torch.from_numpy(x)).detach().numpy()).max() <= ATOL


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, 1), (3, 2, 1), (1, 1, 0), (4, 2, 0)])
def test_conv2d(kernel, stride, padding):
    torch.manual_seed(1)
    conv = tnn.Conv2d(3, 5, kernel, stride, padding)
    x = np.random.RandomState(1).randn(2, 9, 8, 3).astype(np.float32)
    params = {"params": {"kernel": layout.conv2d(conv.weight.detach().numpy()), "bias": conv.bias.detach().numpy()}}
    flax_conv = nn.Conv(5, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2)
    out = np.asarray(flax_conv.apply(params, jnp.asarray(x)))
    ref = _nhwc(conv(_nchw(x)))
    assert out.shape == ref.shape and np.abs(out - ref).max() <= ATOL


@pytest.mark.parametrize("impl", ["lax", "subpixel"])
@pytest.mark.parametrize(("stride", "padding", "size"), [(1, 0, 1), (2, 1, 4), (2, 1, 5), (2, 0, 3)])
def test_conv_transpose2d(impl, stride, padding, size):
    torch.manual_seed(2)
    convt = tnn.ConvTranspose2d(6, 4, 4, stride, padding, bias=False)
    x = np.random.RandomState(2).randn(2, size, size, 6).astype(np.float32)
    out = np.asarray(conv_transpose(jnp.asarray(x), jnp.asarray(layout.conv_transpose2d(convt.weight.detach().numpy())), stride, padding, impl))
    ref = _nhwc(convt(_nchw(x)))
    assert out.shape == ref.shape and np.abs(out - ref).max() <= ATOL


def test_group_norm():
    torch.manual_seed(3)
    gn = tnn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = (np.random.RandomState(3).randn(2, 5, 5, 8) * 3 + 1).astype(np.float32)
    params = {"params": layout.norm(gn.weight.detach().numpy(), gn.bias.detach().numpy())}
    out = nn.GroupNorm(num_groups=4, epsilon=1e-6, use_fast_variance=False).apply(params, jnp.asarray(x))
    assert np.abs(np.asarray(out) - _nhwc(gn(_nchw(x)))).max() <= ATOL


def test_batchnorm_inference():
    torch.manual_seed(4)
    bn = tnn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = np.random.RandomState(4).randn(3, 4, 4, 6).astype(np.float32)
    variables = {
        "params": layout.norm(bn.weight.detach().numpy(), bn.bias.detach().numpy()),
        "batch_stats": layout.batchnorm_stats(bn.running_mean.numpy(), bn.running_var.numpy()),
    }
    out = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(variables, jnp.asarray(x))
    assert np.abs(np.asarray(out) - _nhwc(bn(_nchw(x)))).max() <= ATOL


def test_rules_reject_wrong_ranks():
    with pytest.raises(ValueError, match="2-D"):
        layout.linear(np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="4-D"):
        layout.conv2d(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="4-D"):
        layout.conv_transpose2d(np.zeros((2, 3, 4)))
