"""The model-agnostic generator type: any differentiable image generator becomes one.

A :class:`Generator` is data, not behaviour: a pure ``apply(params, inputs, condition)``
function, its parameters, and the shapes the engine needs to invert it. The engine never
imports a model module; it only sees Generators.

Example: wrapping a plain JAX function (or any Flax module's ``apply``)::

    import jax.numpy as jnp
    from ronan_jax.engine.generator import Generator

    def apply(params, z, condition):
        img = jnp.tanh(z @ params["w"]).reshape(z.shape[0], 8, 8, 1)
        return (img + 1.0) / 2.0

    gen = Generator(name="tiny", apply_fn=apply, params={"w": w},
                    input_shape=(16,), output_shape=(8, 8, 1))
    images = gen.generate(jax.random.key(0), 4)      # (4, 8, 8, 1) in [0, 1]

For a Flax linen module in inference mode::

    apply = lambda p, z, c: module.apply(p, z, train=False)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
ApplyFn = Callable[[Params, jax.Array, Any], jax.Array]
PriorFn = Callable[[jax.Array, tuple[int, ...]], jax.Array]
EncodeFn = Callable[[Params, jax.Array, Any], jax.Array]


def standard_normal_prior(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The default prior of a generator's input: i.i.d. N(0, 1), float32."""
    return jax.random.normal(key, shape, dtype=jnp.float32)


def param_hash(params: Params) -> str:
    """SHA-256 over every leaf of a parameter pytree (paths, dtypes, shapes, bytes).

    Used as the generator's identity in profiles and result rows, so a profile can never be
    applied to weights other than the ones it was built from.
    """
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves:
        arr = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(arr.dtype).encode())
        digest.update(str(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def cached_param_hash(holder: Any) -> str:
    """:func:`param_hash` of a frozen holder's ``params``, computed once per object."""
    cached = holder.__dict__.get("_param_hash")
    if cached is None:
        cached = param_hash(holder.params)
        object.__setattr__(holder, "_param_hash", cached)
    return cached


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """An amortised inverse of a generator, ``E: image -> input``, for warm starts.

    Attributes:
        apply_fn: pure ``(params, images[N, H, W, C], condition) -> inputs[N, *input_shape]``
            (float32; the images are the ones being inverted, in [0, 1]).
        params: its parameter pytree (hashed into the generator's identity).
        info: free-form provenance (architecture, training).
    """

    apply_fn: EncodeFn
    params: Params
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def param_hash(self) -> str:
        return cached_param_hash(self)

    def __call__(self, images: jax.Array, condition: Any = None) -> jax.Array:
        return self.apply_fn(self.params, images, condition).astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
    """A generative model as the engine sees it.

    Attributes:
        name: human-readable identity, e.g. ``"dcgan-mnist"``.
        apply_fn: pure function ``(params, inputs[N, *input_shape], condition) -> [N, H, W, C]``
            returning float32 images in [0, 1], in inference mode (no BatchNorm statistics
            updates, no dropout). ``condition`` is ``None`` or a batch of fixed conditioning
            (``[N, ...]``) that is given, never optimised.
        params: the parameter pytree passed to ``apply_fn`` (an explicit argument, so one
            compiled program serves every set of weights of the same shapes).
        input_shape: shape of one input (latent, initial noise, VAE latent), without batch.
        output_shape: ``(H, W, C)`` of one generated image.
        prior: sampler ``(key, shape) -> array`` for random inputs and restarts.
        condition: optional fixed conditioning for one image (broadcast over the batch).
        for_shape_fn: optional ``(H, W, C) -> Generator`` for fully convolutional generators
            that can emit other sizes (used for reference models).
        info: free-form provenance (architecture config, source checkpoint, ...).
        num_classes: classes of a class-conditional model whose class is given per image
            (0: unconditional, or its class is fixed in ``condition``).
        class_condition: ``(class ids [N] int32) -> per-image condition pytree`` of a
            conditional model; ``None`` means the condition is the class ids themselves.
            Id -1 stands for the all-zero class vector where the family has one.
        encoder: optional :class:`Encoder` mapping images of ``output_shape`` to inputs; with
            ``InversionConfig.warm_start`` every image gets one more run, started at its
            encoding. Part of the identity (``encoder_hash``) when present.
    """

    name: str
    apply_fn: ApplyFn
    params: Params
    input_shape: tuple[int, ...]
    output_shape: tuple[int, int, int]
    prior: PriorFn = standard_normal_prior
    condition: Any = None
    for_shape_fn: Callable[[tuple[int, int, int]], Generator] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_classes: int = 0
    class_condition: Callable[[jax.Array], Any] | None = None
    encoder: Encoder | None = None

    def __post_init__(self) -> None:
        if len(self.output_shape) != 3:
            raise ValueError(f"output_shape must be (H, W, C), got {self.output_shape}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    def conditions_for_classes(self, class_ids: Any) -> Any:
        """The per-image conditions that make image ``i`` use class ``class_ids[i]``."""
        ids = jnp.asarray(class_ids, jnp.int32)
        return ids if self.class_condition is None else self.class_condition(ids)

    @property
    def identity(self) -> dict[str, str]:
        """Name, parameter hash and, when it has one, the encoder's hash: what profiles and
        result rows record."""
        out = {"name": self.name, "param_hash": self.param_hash}
        if self.encoder is not None:
            out["encoder_hash"] = self.encoder.param_hash
        return out

    @property
    def param_hash(self) -> str:
        return cached_param_hash(self)

    def sample_inputs(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` inputs drawn from the generator's prior."""
        return self.prior(key, (n, *self.input_shape))

    def batched_condition(self, n: int) -> Any:
        """The fixed conditioning broadcast to a batch of ``n`` (or ``None``)."""
        if self.condition is None:
            return None
        return jax.tree_util.tree_map(
            lambda c: jnp.broadcast_to(jnp.asarray(c), (n, *jnp.shape(c))), self.condition
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Images for a batch of inputs, float32 NHWC in [0, 1]."""
        out = self.apply_fn(self.params, inputs, self.batched_condition(inputs.shape[0]))
        return out.astype(jnp.float32)

    def generate(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` images from random prior inputs."""
        return self(self.sample_inputs(key, n))

    def for_shape(self, shape: tuple[int, int, int]) -> Generator:
        """This generator, or a resized sibling, emitting images of ``shape`` (H, W, C).

        Channel mismatches are bridged by :func:`match_channels`; spatial ones need a fully
        convolutional generator (``for_shape_fn``).
        """
        shape = tuple(int(s) for s in shape)
        gen = self
        if gen.output_shape[:2] != shape[:2]:
            if gen.for_shape_fn is None:
                raise ValueError(
                    f"generator {gen.name!r} emits {gen.output_shape[:2]} images and cannot "
                    f"be resized to {shape[:2]}"
                )
            sibling = gen.for_shape_fn(shape)
            if sibling.encoder is None and gen.encoder is not None:
                # A resizable generator's encoder is fully convolutional too: it serves the
                # sibling's size with the same weights.
                sibling = sibling.replace(encoder=gen.encoder)
            gen = sibling
        if gen.output_shape[2] != shape[2]:
            gen = match_channels(gen, shape[2])
        return gen

    def replace(self, **changes: Any) -> Generator:
        return dataclasses.replace(self, **changes)


# ITU-R BT.601 luma weights: the one rule for colour <-> greyscale everywhere in ronan-jax.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_channels(images: jax.Array, channels: int) -> jax.Array:
    """Convert NHWC images between 1 and 3 channels by the project's one documented rule.

    Colour to greyscale is BT.601 luma (0.299 R + 0.587 G + 0.114 B); greyscale to colour
    replicates the single channel. Other channel counts are rejected.
    """
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        w = jnp.asarray(LUMA_WEIGHTS, dtype=images.dtype)
        return jnp.sum(images * w, axis=-1, keepdims=True)
    if have == 1 and channels == 3:
        return jnp.repeat(images, 3, axis=-1)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


@dataclasses.dataclass(frozen=True)
class _ChannelAdapter:
    """``apply_fn`` wrapper converting output channels; hashable by value so compiled
    programs stay cached across equal wrappers."""

    inner: ApplyFn
    channels: int

    def __call__(self, params: Params, inputs: jax.Array, condition: Any) -> jax.Array:
        return to_channels(self.inner(params, inputs, condition), self.channels)


@dataclasses.dataclass(frozen=True)
class _EncoderChannelAdapter:
    """Encoder ``apply_fn`` wrapper converting its images to the channels it was trained on
    (the inverse direction of :class:`_ChannelAdapter`); hashable by value."""

    inner: EncodeFn
    channels: int

    def __call__(self, params: Params, images: jax.Array, condition: Any) -> jax.Array:
        return self.inner(params, to_channels(images, self.channels), condition)


def match_channels(gen: Generator, channels: int) -> Generator:
    """Wrap ``gen`` so its output has ``channels`` channels (see :func:`to_channels`); its
    encoder, if any, then reads images of ``channels`` channels by the same rule."""
    h, w, c = gen.output_shape
    encoder = gen.encoder
    if encoder is not None:
        encoder = dataclasses.replace(encoder, apply_fn=_EncoderChannelAdapter(encoder.apply_fn, c))
    return gen.replace(
        apply_fn=_ChannelAdapter(gen.apply_fn, channels),
        output_shape=(h, w, channels),
        info={**gen.info, "channel_rule": f"{c}->{channels} (BT.601 luma / replicate)"},
        encoder=encoder,
    )
