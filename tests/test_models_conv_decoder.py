"""The fully convolutional decoder: one parameter tree for every image size and channel count."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ronan_jax.engine.generator import to_channels
from ronan_jax.models import conv_decoder as cd
from ronan_jax.models.checkpoint import check_tree, load_generator, save_generator

CFG = cd.ConvDecoderConfig(latent_channels=4, nc=3, widths=(8, 8, 4), n_res=1)


@pytest.fixture(scope="module")
def gen():
    return cd.make_generator(CFG, cd.init_variables(CFG, jax.random.key(0)), name="tiny-ref")


def test_default_generator_maps_a_quarter_size_latent_to_32x32_colour(gen):
    assert gen.input_shape == (8, 8, 4)
    assert gen.output_shape == (32, 32, 3)
    images = gen.generate(jax.random.key(1), 2)
    assert images.shape == (2, 32, 32, 3) and images.dtype == jnp.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.parametrize("size", [32, 64, 256])
def test_for_shape_reuses_the_same_weights_at_every_size(gen, size):
    sized = gen.for_shape((size, size, 3))
    assert sized.input_shape == (size // 4, size // 4, 4)
    assert sized.output_shape == (size, size, 3)
    assert sized.params is gen.params
    assert sized.param_hash == gen.param_hash
    assert sized.apply_fn == gen.apply_fn
    images = sized.generate(jax.random.key(2), 1)
    assert images.shape == (1, size, size, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_for_shape_handles_non_square_sizes(gen):
    sized = gen.for_shape((32, 48, 3))
    assert sized.input_shape == (8, 12, 4)
    assert sized.generate(jax.random.key(3), 1).shape == (1, 32, 48, 3)


def test_for_shape_greyscale_is_bt601_luma_of_the_colour_output(gen):
    grey = gen.for_shape((32, 32, 1))
    z = gen.sample_inputs(jax.random.key(4), 2)
    assert grey.output_shape == (32, 32, 1)
    np.testing.assert_allclose(np.asarray(grey(z)), np.asarray(to_channels(gen(z), 1)), atol=1e-6)
    w = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(
        np.asarray(grey(z))[..., 0], (np.asarray(gen(z)) * w).sum(-1), atol=1e-6
    )


@pytest.mark.parametrize("shape", [(30, 32, 3), (32, 2, 3), (0, 32, 3)])
def test_sizes_that_are_not_positive_multiples_of_4_are_rejected(gen, shape):
    with pytest.raises(ValueError, match="multiples of 4"):
        gen.for_shape(shape)


def test_a_local_latent_change_only_changes_nearby_pixels(gen):
    big = gen.for_shape((64, 64, 3))
    z = big.sample_inputs(jax.random.key(5), 1)
    z2 = z.at[0, 0, 0, :].add(3.0)
    diff = np.abs(np.asarray(big(z2)) - np.asarray(big(z)))[0].max(-1)
    assert diff[:8, :8].max() > 1e-4
    assert diff[32:, 32:].max() == 0.0


def test_config_survives_a_json_round_trip_as_a_hashable_value():
    cfg = cd.ConvDecoderConfig(**json.loads(json.dumps(dataclasses.asdict(CFG))))
    assert cfg == CFG and cfg.widths == (8, 8, 4)
    assert hash(cd.ConvDecoderApply(cfg)) == hash(cd.ConvDecoderApply(CFG))
    with pytest.raises(ValueError, match="3 channel counts"):
        cd.ConvDecoderConfig(widths=(8, 8))


def test_encoder_emits_mean_and_log_variance_maps_of_the_latent_shape():
    full = cd.init_training_variables(CFG, jax.random.key(0))
    check_tree(cd.init_variables(CFG, jax.random.key(0)), cd.decoder_variables(full))
    x = jnp.full((2, 64, 32, 3), 0.5, jnp.float32)
    logits, mu, logvar = cd.ConvVAE(CFG).apply(full, x, jax.random.key(1))
    assert logits.shape == (2, 64, 32, 3)
    assert mu.shape == logvar.shape == (2, 16, 8, 4)


def test_loaded_checkpoint_keeps_for_shape(tmp_path, gen):
    save_generator(tmp_path / "ref", "conv-decoder", dataclasses.asdict(CFG), gen.params)
    loaded = load_generator(tmp_path / "ref", name="tiny-ref")
    z = gen.for_shape((64, 64, 3)).sample_inputs(jax.random.key(6), 1)
    np.testing.assert_array_equal(
        np.asarray(loaded.for_shape((64, 64, 3))(z)), np.asarray(gen.for_shape((64, 64, 3))(z))
    )
