"""StyleGAN2 in Flax against the PyTorch reference (benchmarks/torch_stylegan2.py, NVlabs names and
maths): images to 1e-5 and input gradients to 1e-4 relative, in the z, w and w+ spaces,
unconditional and class-conditional, noise "const" and "none", with truncation; the w / w+
prior; the settings in the parameter hash; checkpoints round-trip."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_stylegan2 as ts
from converters.stylegan2 import nvlabs_variables
from ronan_jax.attribution import classes
from ronan_jax.models import stylegan2 as sg
from ronan_jax.models.checkpoint import load_generator, save_generator

N = 3


def torch_and_config(res: int, c_dim: int, conv_clamp: float | None = None, seed: int = 0):
    net = ts.randomize(ts.Generator(
        16, c_dim, 16, res, 3, mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=16 * res // 2, channel_max=16, conv_clamp=conv_clamp),
    ), seed=seed)
    cfg = sg.StyleGAN2Config(z_dim=16, w_dim=16, num_classes=c_dim, img_resolution=res,
                             mapping_layers=2, channel_base=16 * res // 2, channel_max=16,
                             conv_clamp=conv_clamp)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return net, cfg, nvlabs_variables(state, cfg, "torch")


@pytest.fixture(scope="module")
def nets():
    return {32: torch_and_config(32, 0), 64: torch_and_config(64, 3, conv_clamp=0.8, seed=1)}


# (res, space, noise, psi, cutoff): each compile costs seconds on CI's CPUs, so four cases
# cover every space, both sizes, conditional (64) and not (32), both noise modes and
# truncation with and without a cutoff; the slow test runs the full matrix.
CASES = [
    (32, "z", "const", 0.7, 3),
    (32, "w+", "none", 1.0, None),
    (64, "z", "none", 0.6, None),
    (64, "w", "const", 1.0, None),
]
FULL = [(r, s, n, p, c) for r in (32, 64) for s in ("z", "w", "w+") for n in ("const", "none")
        for p, c in ((1.0, None), (0.7, None), (0.7, 3)) if s == "z" or p == 1.0]


def torch_images(net, space, x, labels, noise, psi, cutoff):
    if space == "z":
        c = None
        if net.c_dim:
            c = torch.zeros(len(labels), net.c_dim)
            for i, k in enumerate(labels):
                if k >= 0:
                    c[i, k] = 1.0
        img = net(x, c, psi, cutoff, noise)
    else:
        ws = x.unsqueeze(1).repeat(1, net.num_ws, 1) if space == "w" else x
        img = net.synthesis(ws, noise)
    return ((img.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize(("res", "space", "noise", "psi", "cutoff"), CASES)
def test_images_and_input_gradients_match_pytorch(nets, res, space, noise, psi, cutoff):
    check_parity(*nets[res], space, noise, psi, cutoff)


@pytest.mark.slow
@pytest.mark.parametrize(("res", "space", "noise", "psi", "cutoff"), FULL)
def test_full_parity_matrix(nets, res, space, noise, psi, cutoff):
    check_parity(*nets[res], space, noise, psi, cutoff)


@pytest.mark.slow
@pytest.mark.parametrize("space", ["z", "w+"])
def test_parity_at_256px(space):
    check_parity(*torch_and_config(256, 3, seed=2), space, "const", 0.7, None if space == "w+" else 6)


def check_parity(net, cfg, variables, space, noise, psi, cutoff):
    res = cfg.img_resolution
    gen = sg.make_generator(cfg, variables, input_space=space, noise_mode=noise,
                            truncation_psi=psi, truncation_cutoff=cutoff)
    rng = np.random.RandomState(res)
    x = (rng.randn(N, *gen.input_shape) * (1.0 if space == "z" else 0.7)).astype(np.float32)
    labels = np.array([0, 2, -1], np.int32)  # -1: the all-zero class vector
    target = rng.rand(N, res, res, 3).astype(np.float32)
    cond = jnp.asarray(labels) if (space == "z" and cfg.num_classes) else None

    def loss(inp):
        return jnp.sum((gen.apply_fn(gen.params, inp, cond) - target) ** 2)

    out, grad = jax.jit(lambda inp: (gen.apply_fn(gen.params, inp, cond), jax.grad(loss)(inp)))(jnp.asarray(x))
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = torch_images(net, space, xt, labels, noise, psi, cutoff)
    ((ref - torch.from_numpy(target)) ** 2).sum().backward()
    ref, ref_grad = ref.detach().numpy(), xt.grad.numpy()
    assert 0.2 < ref.mean() < 0.8 and ((ref > 0) & (ref < 1)).mean() > 0.5  # not saturated
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5
    assert np.abs(ref_grad).max() > 0
    assert np.abs(np.asarray(grad) - ref_grad).max() <= 1e-4 * np.abs(ref_grad).max()


def test_every_setting_is_part_of_the_identity_a_profile_records(nets):
    _, cfg, variables = nets[32]
    base = sg.make_generator(cfg, variables)
    assert base.info["noise_mode"] == "none" and base.info["input_space"] == "z"
    assert base.info["truncation_psi"] == 1.0 and base.input_shape == (16,)
    others = [sg.make_generator(cfg, variables, **kw) for kw in (
        dict(noise_mode="const"), dict(truncation_psi=0.5), dict(truncation_psi=0.5, truncation_cutoff=2),
        dict(input_space="w"), dict(input_space="w+"))]
    assert len({g.param_hash for g in (base, *others)}) == 6
    assert sg.make_generator(cfg, variables).param_hash == base.param_hash


def test_the_w_prior_is_the_mapping_of_normal_samples(nets):
    net, cfg, variables = nets[64]
    gen = sg.make_generator(cfg, variables, input_space="w+", truncation_psi=0.7, truncation_cutoff=4)
    key = jax.random.key(3)
    ws = np.asarray(jax.jit(gen.prior, static_argnums=1)(key, (5, *gen.input_shape)))
    assert ws.shape == (5, cfg.num_ws, 16)
    k_z, k_c = jax.random.split(key)  # MappingPrior's draws: z, then a class per sample
    z = np.array(jax.random.normal(k_z, (5, 16)))
    c = np.array(jax.random.randint(k_c, (5,), 0, 3)).astype(np.int64)
    with torch.no_grad():
        ref = net.mapping(torch.from_numpy(z), torch.nn.functional.one_hot(torch.from_numpy(c), 3).float(), 0.7, 4)
    assert np.abs(ws - ref.numpy()).max() < 1e-5
    assert np.abs(ws[:, 0] - ws[:, 3]).max() < 1e-6 and np.abs(ws[:, 0] - ws[:, 4]).max() > 1e-3
    assert classes.num_classes(gen) == 0  # the class is in w: no condition taken
    assert classes.num_classes(sg.make_generator(cfg, variables)) == 3


def test_invalid_settings_are_refused(nets):
    _, cfg, variables = nets[32]
    for bad in (dict(input_space="x"), dict(noise_mode="random"),
                dict(input_space="w", truncation_psi=0.5, truncation_cutoff=2)):
        with pytest.raises(ValueError):
            sg.make_generator(cfg, variables, **bad)


def test_checkpoint_round_trip_keeps_the_settings(nets, tmp_path):
    _, cfg, variables = nets[64]
    cfg = dataclasses.replace(cfg, input_space="w+", noise_mode="const")
    save_generator(tmp_path / "sg", "stylegan2", dataclasses.asdict(cfg), variables, {"name": "sg"})
    gen = load_generator(tmp_path / "sg")
    again = sg.make_generator(cfg, variables)
    assert gen.input_shape == (cfg.num_ws, 16) and gen.info["noise_mode"] == "const"
    assert gen.param_hash == again.param_hash and gen.apply_fn == again.apply_fn
    assert gen.prior == again.prior  # equal priors: one compiled program serves both


def test_bfloat16_images_and_input_gradients_track_float32(nets):
    from ronan_jax.engine.program import run_losses

    # z: through the mapping and the synthesis (both had promoted bfloat16 back to float32,
    # and the convolutions refused the mix)
    _, cfg, variables = nets[32]
    gen = sg.make_generator(cfg, variables)
    z = gen.sample_inputs(jax.random.key(4), 2)
    target = jnp.asarray(np.random.RandomState(0).rand(2, 32, 32, 3), jnp.float32)

    def loss_and_images(dtype):
        def total(inp):
            losses, images = run_losses(gen.apply_fn, lambda a, b: jnp.mean((a - b) ** 2), dtype,
                                        gen.params, inp, target, None)
            return losses.sum(), images
        (loss, images), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(z)
        return float(loss), np.asarray(images), np.asarray(grad)

    l32, im32, g32 = loss_and_images(jnp.float32)
    l16, im16, g16 = loss_and_images(jnp.bfloat16)
    assert 0 < np.abs(im16 - im32).max() < 0.05  # computed in bfloat16, not silently float32
    assert abs(l16 - l32) < 0.02 * l32 and np.all(np.isfinite(g16))
    assert np.corrcoef(g16.ravel(), g32.ravel())[0, 1] > 0.9  # the same descent direction
