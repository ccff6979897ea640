"""The zoo's table of built-in models: what each one is, where its weights ship, its reference.

Every model was trained offline by :mod:`ronan_jax.zoo.train` and ships as a checkpoint
directory (:mod:`ronan_jax.models.checkpoint`: orbax parameters + ``model_card.json``) plus a
``samples.png`` grid under ``ronan_jax/zoo/weights/<name>/``.

Reference models. RONAN calibrates a model's reconstruction loss of an image by dividing it by
the image's loss on a reference generator Mr with strong generation ability, trained on other
data with another architecture: the reference measures how hard the image is to reconstruct
at all, so the ratio removes the image's inherent complexity
(:mod:`ronan_jax.attribution.calibrate`). The zoo's default reference for every inspected
model is ``ref-photo``: a fully convolutional VAE decoder with a spatial latent (Stable
Diffusion's VAE, shrunk) trained on colour photo patches. It serves any image size that is a
multiple of 4 with the same weights and greyscale images through BT.601 luma
(``Generator.for_shape``). ``ref-photo`` cannot be its own reference (the ratio would always
be 1), so it is calibrated by ``dcgan-photo`` instead.
Note that ``dcgan-photo`` and ``ref-photo`` were trained on the same photos (the held-out
photos are unseen by both), so that pair differs only in architecture.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from pathlib import Path
from typing import Any

from ronan_jax.engine.generator import Generator
from ronan_jax.models.checkpoint import CARD_FILE, CheckpointError, load_generator
from ronan_jax.models.conv_decoder import ConvDecoderConfig
from ronan_jax.models.dcgan import DCGANConfig
from ronan_jax.models.vae import VAEConfig

DEFAULT_MODEL = "dcgan-mnist"
DEFAULT_REFERENCE = "ref-photo"
SAMPLES_FILE = "samples.png"


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One built-in model.

    Attributes:
        name: zoo name (also the Generator's name and the weights directory).
        description: one line for listings.
        architecture: key of :data:`ronan_jax.models.registry.ARCHITECTURES`.
        config: the architecture config (a frozen dataclass).
        data: training dataset name (see :func:`ronan_jax.zoo.data.dataset`).
        output_shape: ``(H, W, C)`` of the images it emits (its native size).
        default_reference: zoo name of the reference model used to calibrate it.
    """

    name: str
    description: str
    architecture: str
    config: Any
    data: str
    output_shape: tuple[int, int, int]
    default_reference: str = DEFAULT_REFERENCE

    @property
    def config_dict(self) -> dict[str, Any]:
        """The config as the JSON-able dict a model card stores."""
        return dataclasses.asdict(self.config)

    def as_dict(self) -> dict[str, Any]:
        """The entry as a plain JSON-able dict (one row of :func:`list_models`)."""
        return {
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "config": self.config_dict,
            "data": self.data,
            "output_shape": list(self.output_shape),
            "default_reference": self.default_reference,
        }


_MNIST_DCGAN = DCGANConfig(nz=100, ngf=32, ndf=32, nc=1, depth=4)

MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "dcgan-mnist",
            "DCGAN (ngf=32, 100-d latent) on MNIST half A, 32x32 greyscale; the default "
            "inspected model",
            "dcgan",
            _MNIST_DCGAN,
            "mnist-a",
            (32, 32, 1),
        ),
        ZooModel(
            "vae-mnist",
            "Convolutional VAE (32-d latent) on MNIST half A, 32x32 greyscale: the same data "
            "as dcgan-mnist, another architecture",
            "vae",
            VAEConfig(latent_dim=32, image_size=32, nc=1, nf=32, n_up=3),
            "mnist-a",
            (32, 32, 1),
        ),
        ZooModel(
            "dcgan-mnist-b",
            "DCGAN with dcgan-mnist's config on the disjoint MNIST half B: same architecture, "
            "other data",
            "dcgan",
            _MNIST_DCGAN,
            "mnist-b",
            (32, 32, 1),
        ),
        ZooModel(
            "cdcgan-mnist",
            "Class-conditional DCGAN (dcgan-mnist's sizes, one-hot digit concatenated to the "
            "100-d latent) on MNIST half A, 32x32 greyscale: 10 classes, label = digit",
            "dcgan",
            dataclasses.replace(_MNIST_DCGAN, num_classes=10),
            "mnist-a",
            (32, 32, 1),
        ),
        ZooModel(
            "dcgan-photo",
            "DCGAN (ngf=32, 100-d latent) on 32x32 colour photo patches",
            "dcgan",
            DCGANConfig(nz=100, ngf=32, ndf=32, nc=3, depth=4),
            "photo-train",
            (32, 32, 3),
        ),
        ZooModel(
            "ref-photo",
            "Fully convolutional VAE decoder, spatial latent (H/4, W/4, 4), on colour photo "
            "patches; any size that is a multiple of 4; the default reference model",
            "conv-decoder",
            ConvDecoderConfig(latent_channels=4, nc=3, widths=(64, 32, 16), n_res=1),
            "photo-train",
            (32, 32, 3),
            default_reference="dcgan-photo",
        ),
    )
}


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")


def get(name: str) -> ZooModel:
    """The registry entry of a zoo model (``ValueError`` listing the known names if unknown)."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise _unknown(name) from None


def list_models() -> list[dict[str, Any]]:
    """Every zoo model as a plain dict: name, description, architecture, config, data,
    output_shape, default_reference, and whether its weights are installed."""
    return [
        {**m.as_dict(), "installed": (weights_dir(m.name) / CARD_FILE).is_file()}
        for m in MODELS.values()
    ]


def default_reference(name: str) -> str:
    """Zoo name of the reference model that calibrates ``name``."""
    return get(name).default_reference


def weights_dir(name: str) -> Path:
    """The package directory holding a model's checkpoint and sample grid.

    Resolved with :mod:`importlib.resources`, so it works from a source tree and from a
    regular (unzipped) pip install; orbax needs a real directory, so zipped installs are not
    supported.
    """
    get(name)
    root = importlib.resources.files("ronan_jax.zoo") / "weights" / name
    return Path(str(root))


@functools.cache
def load(name: str) -> Generator:
    """The zoo model ``name`` as a :class:`Generator` (verified against its model card).

    Cached: repeated calls return the same Generator, so compiled programs are reused.
    """
    get(name)
    path = weights_dir(name)
    if not (path / CARD_FILE).is_file():
        raise CheckpointError(
            f"zoo model {name!r} has no weights at {path}; train them with "
            f"`python -m ronan_jax.zoo.train {name}`"
        )
    return load_generator(path, name=name)


def card(name: str) -> dict[str, Any]:
    """The model card of a shipped zoo model."""
    from ronan_jax.models.checkpoint import read_card

    return read_card(weights_dir(name))
