"""The zoo training entry point: tiny runs into tmp_path write loadable checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from ronan_jax.models.checkpoint import CheckpointError, load_generator
from ronan_jax.zoo import train as zoo_train

GRID_PX = (8 * (32 + 2) + 2) * 3


EXPECTED = {  # name -> (architecture, output shape, training data, licence fragment)
    "dcgan-mnist": ("dcgan", (32, 32, 1), "mnist-a", "CC BY-SA"),
    "vae-mnist": ("vae", (32, 32, 1), "mnist-a", "CC BY-SA"),
    "ref-photo": ("conv-decoder", (32, 32, 3), "photo-train", "CC0"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_two_steps_on_a_tiny_subset_write_checkpoint_card_and_grid(tmp_path, name):
    out = tmp_path / name
    card = zoo_train.train(name, steps=2, subset=8, out=out, seed=3, progress=False)
    architecture, shape, data, licence = EXPECTED[name]
    gen = load_generator(out, name=name)
    assert gen.output_shape == shape
    assert gen.param_hash == card["param_hash"]
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk == card
    t = card["training"]
    assert (t["steps"], t["seed"], t["subset"], t["num_images"]) == (2, 3, 8, 8)
    assert t["data"] == data
    assert licence in t["data_licence"]
    assert t["training_seconds"] > 0
    assert t["final_losses"] and all(np.isfinite(v) for v in t["final_losses"].values())
    assert card["architecture"] == architecture
    with Image.open(out / "samples.png") as im:
        assert im.size == (GRID_PX, GRID_PX)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_training_is_deterministic_for_a_seed(tmp_path):
    kw = {"steps": 2, "subset": 8, "progress": False}
    a = zoo_train.train("vae-mnist", out=tmp_path / "a", seed=1, **kw)
    b = zoo_train.train("vae-mnist", out=tmp_path / "b", seed=1, **kw)
    c = zoo_train.train("vae-mnist", out=tmp_path / "c", seed=2, **kw)
    assert a["param_hash"] == b["param_hash"] != c["param_hash"]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        zoo_train.train("vae-mnist", steps=1, subset=4, out=out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_a_model_outside_the_zoo_trains_from_its_own_entry_and_recipe(tmp_path):
    import dataclasses

    from ronan_jax.models.checkpoint import read_card
    from ronan_jax.models.dcgan import DCGANConfig
    from ronan_jax.zoo.registry import ZooModel

    entry = ZooModel("tiny-photo64", "a 64x64 DCGAN outside the zoo", "dcgan",
                     DCGANConfig(nz=8, ngf=4, ndf=4, nc=3, depth=5), "photo64-train", (64, 64, 3))
    recipe = dataclasses.replace(zoo_train.RECIPES["dcgan-photo"], steps=2)
    card = zoo_train.train("tiny-photo64", out=tmp_path / "m", subset=8, progress=False,
                           entry=entry, recipe=recipe, command="made by this test")
    assert load_generator(tmp_path / "m", name="tiny-photo64").output_shape == (64, 64, 3)
    assert read_card(tmp_path / "m") == card
    assert card["training"]["command"] == "made by this test"
    assert card["training"]["data"] == "photo64-train" and card["training"]["steps"] == 2
    with pytest.raises(ValueError, match="together"):
        zoo_train.train("tiny-photo64", out=tmp_path / "n", entry=entry)
    with pytest.raises(ValueError, match="not in the zoo"):
        zoo_train.train("tiny-photo64", entry=entry, recipe=recipe)


def test_unknown_model_and_bad_steps_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo_train.train("nope", out=tmp_path / "x")
    with pytest.raises(ValueError, match="steps"):
        zoo_train.train("vae-mnist", steps=0, out=tmp_path / "x")


def test_command_line_passes_its_options_to_train(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_train(name, **kw):
        seen.update(name=name, **kw)
        return {
            "param_hash": "ab" * 32,
            "training": {"steps": 5, "training_seconds": 1.0, "final_losses": {"loss": 0.5}},
        }

    monkeypatch.setattr(zoo_train, "train", fake_train)
    argv = [
        "dcgan-mnist-b",
        "--steps",
        "5",
        "--out",
        str(tmp_path),
        "--seed",
        "4",
        "--subset",
        "16",
        "--data",
        "mnist-overlap-0.5",
        "--no-progress",
    ]
    assert zoo_train.main(argv) == 0
    assert seen == {
        "name": "dcgan-mnist-b",
        "steps": 5,
        "out": tmp_path,
        "seed": 4,
        "subset": 16,
        "data": "mnist-overlap-0.5",
        "overwrite": False,
        "progress": False,
    }
    assert "loss=0.5" in capsys.readouterr().out


def test_sample_grid_tiles_64_images_with_padding():
    images = np.zeros((64, 32, 32, 1), np.float32)
    images[0] = 1.0
    grid = zoo_train.sample_grid(images, upscale=1)
    assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3) and grid.dtype == np.uint8
    assert (grid[2:34, 2:34] == 255).all()  # first cell white
    assert (grid[2:34, 36:68] == 0).all()  # second cell black
    assert (grid[0, :] == 128).all()  # grey padding
    with pytest.raises(ValueError, match="64 images"):
        zoo_train.sample_grid(images[:10])
