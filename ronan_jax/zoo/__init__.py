"""Built-in models: trained generators shipped with ronan-jax, their registry and sample sets.

Example::

    from ronan_jax import zoo

    [m["name"] for m in zoo.list_models()]   # dcgan-mnist, vae-mnist, dcgan-mnist-b, ...
    gen = zoo.load(zoo.DEFAULT_MODEL)         # Generator, 32x32x1 in [0, 1]
    ref = zoo.load(zoo.default_reference(zoo.DEFAULT_MODEL)).for_shape(gen.output_shape)
    real = zoo.load_samples()["mnist_unseen"] # (100, 32, 32, 1) float32

Weights are trained by ``python -m ronan_jax.zoo.train NAME`` (see :mod:`ronan_jax.zoo.train`)
from the offline data of :mod:`ronan_jax.zoo.data`.
"""

from ronan_jax.zoo.registry import (
    DEFAULT_MODEL,
    DEFAULT_REFERENCE,
    MODELS,
    ZooModel,
    card,
    default_reference,
    get,
    list_models,
    load,
    weights_dir,
)
from ronan_jax.zoo.sample_sets import load_samples

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_REFERENCE",
    "MODELS",
    "ZooModel",
    "card",
    "default_reference",
    "get",
    "list_models",
    "load",
    "load_samples",
    "weights_dir",
]
