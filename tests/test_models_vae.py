"""The convolutional VAE: decoder as a Generator, training module layout, checkpoint round trip."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ronan_jax.models import vae
from ronan_jax.models.checkpoint import check_tree, load_generator, save_generator
from ronan_jax.models.registry import get_architecture

CFG = vae.VAEConfig(latent_dim=8, image_size=16, nc=1, nf=8, n_up=2)


@pytest.fixture(scope="module")
def variables():
    return vae.init_variables(CFG, jax.random.key(0))


def test_generator_emits_float32_images_in_unit_range(variables):
    gen = vae.make_generator(CFG, variables, name="tiny-vae")
    images = gen.generate(jax.random.key(1), 5)
    assert gen.input_shape == (8,)
    assert gen.output_shape == (16, 16, 1)
    assert images.shape == (5, 16, 16, 1)
    assert images.dtype == jnp.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert gen.info["architecture"] == "vae"


def test_each_image_depends_only_on_its_own_latent(variables):
    gen = vae.make_generator(CFG, variables)
    z = jax.random.normal(jax.random.key(2), (4, 8))
    together = np.asarray(gen(z))
    alone = np.asarray(gen(z[:1]))
    np.testing.assert_allclose(together[:1], alone, atol=1e-6)


def test_equal_configs_give_equal_hashable_apply_functions():
    a, b = vae.VAEApply(CFG), vae.VAEApply(vae.VAEConfig(**dataclasses.asdict(CFG)))
    assert a == b and hash(a) == hash(b)
    assert a != vae.VAEApply(dataclasses.replace(CFG, latent_dim=9))


def test_subpixel_and_lax_transposed_convolutions_agree(variables):
    z = jax.random.normal(jax.random.key(3), (3, 8))
    lax_out = vae.VAEApply(CFG)(variables, z, None)
    sub_out = vae.VAEApply(dataclasses.replace(CFG, convt_impl="subpixel"))(variables, z, None)
    np.testing.assert_allclose(np.asarray(lax_out), np.asarray(sub_out), atol=1e-5)


def test_training_variables_contain_the_generator_tree(variables):
    full = vae.init_training_variables(CFG, jax.random.key(0))
    assert set(full["params"]) == {"encoder", "decoder"}
    check_tree(variables, vae.decoder_variables(full))


def test_encoder_returns_latent_statistics():
    full = vae.init_training_variables(CFG, jax.random.key(0))
    x = jnp.full((2, 16, 16, 1), 0.5, jnp.float32)
    logits, mu, logvar = vae.VAE(CFG).apply(full, x, jax.random.key(1))
    assert logits.shape == (2, 16, 16, 1)
    assert mu.shape == logvar.shape == (2, 8)


def test_image_size_must_be_divisible_by_the_upsampling():
    with pytest.raises(ValueError, match="divisible"):
        vae.VAEConfig(image_size=20, n_up=3)


def test_checkpoint_round_trip_reproduces_the_generator(tmp_path, variables):
    cfg = dataclasses.asdict(CFG)
    save_generator(tmp_path / "ckpt", "vae", cfg, variables, {"name": "tiny-vae"})
    loaded = load_generator(tmp_path / "ckpt")
    direct = get_architecture("vae").make(cfg, variables, name="tiny-vae")
    z = jax.random.normal(jax.random.key(4), (2, 8))
    assert loaded.name == "tiny-vae"
    assert loaded.param_hash == direct.param_hash
    np.testing.assert_array_equal(np.asarray(loaded(z)), np.asarray(direct(z)))
