"""Robust mode: invert through a small differentiable post-processing family.

Images found in the wild were filtered, blurred or sharpened after the model made them. In
robust mode the inversion finds the input ``z`` and a few post-processing parameters ``phi``
jointly, so that ``T_phi(G(z))`` matches the image. ``phi`` is part of the optimised input:
the wrapped generator's input is one flat vector ``[z (flattened), phi]``, so Adam, the
restarts, vmapping and the compiled program treat both alike (no host loop). The reference
model is inverted through the same family (the engine wraps whichever generator it inverts),
so calibration cancels the freedom non-belonging images gain too.

The stages (``ROBUST_MODES``), each the identity at ``phi = 0`` (where every restart starts)
and bounded (``tanh``), so that ``T`` cannot draw an image by itself:

- ``tone``: a global colour map ``y = clip(M x + b, 0, 1) ** gamma`` per pixel: ``M`` the
  identity plus up to +-:data:`MATRIX_BOUND` per entry (a C x C matrix: gain and, on colour
  images, saturation and channel mixing), ``b`` up to +-:data:`BIAS_BOUND` per channel and
  ``gamma`` per channel in ``exp(+-GAMMA_LOG_BOUND)``. Brightness/contrast, gamma,
  saturation and blends with a flat colour (pilgram's filters) are of this form.
- ``tone+blur``: first a 3x3 kernel ``delta + s (B - delta)``, ``B`` the normalised binomial
  blur and ``s`` in +-:data:`SHARPEN_BOUND` (``s > 0`` blurs, ``s < 0`` sharpens: an unsharp
  mask), then the tone map. The kernel's weights sum to 1 for every ``s``.
- ``tone+resample``: the tone map, then a bounded zoom about the centre and shift (a crop
  of up to ~14 % resized back), a symmetric 7-tap kernel (blur or sharpen) and a
  Lanczos-down/bicubic-up resize (:mod:`ronan_jax.engine.resample`). The resize's size is
  discrete, so every size from 0.4x up is tried in every step and the one that best
  explains the image is kept (:func:`apply_resample`; the identity wins ties): the stage
  takes the images being inverted as part of its condition. ``tone+resample+jpeg`` adds the codec last.
- ``jpeg`` and ``tone+jpeg``: (the tone map, then) the JPEG codec of each image's own file
  (:mod:`ronan_jax.engine.jpeg`): no free parameters, its per-image quantisation tables
  (``codecs``) join the model's condition, ``(condition, codecs)``; an image that was not
  a JPEG file passes the stage unchanged. Last, because re-saving is the last thing done.

The result setting is :attr:`~ronan_jax.engine.config.InversionConfig.robust`; profiles and
rows record it and an audit in another mode is refused like any other setting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ronan_jax.engine.config import ROBUST_MODES, InversionConfig
from ronan_jax.engine.generator import Encoder, Generator
from ronan_jax.engine.jpeg import SPEC_SIZE, identity_spec, jpeg_roundtrip
from ronan_jax.engine.resample import (
    apply_along,
    downup_matrices,
    downup_sizes,
    taps_matrix,
    zoom_matrix,
)

__all__ = ["ROBUST_MODES", "codec_table", "inversion_generator", "phi_size", "postprocess",
           "recodes", "resamples", "resized_to", "robust_condition", "robust_generator",
           "split_inputs", "without_codec"]

MATRIX_BOUND = 0.5
BIAS_BOUND = 0.3
GAMMA_LOG_BOUND = 0.5
SHARPEN_BOUND = 1.0
ZOOM_LOG_BOUND = 0.15  # zoom in exp(+-0.15): crops of up to ~14 % of a side
SHIFT_BOUND = 0.03  # shift up to 3 % of a side
TAPS_BOUND = 0.2  # each of the kernel's 3 side taps
RESAMPLE_TAPS = 3
RESAMPLE_RATE = 0.1  # the resample stage's parameters move this much slower than z and tone

_BLUR = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
_DELTA = np.zeros((3, 3))
_DELTA[1, 1] = 1.0


def stage_names(mode: str) -> tuple[str, ...]:
    """The stages of ``mode``, in the order they are applied."""
    if mode not in ROBUST_MODES:
        raise ValueError(f"robust mode must be one of {ROBUST_MODES}, got {mode!r}")
    return {"off": (), "tone": ("tone",), "tone+blur": ("blur", "tone"), "jpeg": ("jpeg",),
            "tone+jpeg": ("tone", "jpeg"), "tone+resample": ("tone", "resample"),
            "tone+resample+jpeg": ("tone", "resample", "jpeg")}[mode]


def recodes(mode: str) -> bool:
    """Whether ``mode`` re-codes the output as JPEG (and so takes per-image ``codecs``)."""
    return "jpeg" in stage_names(mode)


def resamples(mode: str) -> bool:
    """Whether ``mode`` has the resample stage (which takes each image's target pixels, to
    pick the downscale size that explains it best)."""
    return "resample" in stage_names(mode)


def _per_image(mode: str) -> bool:
    """Whether ``mode``'s condition carries per-image data (codecs, targets) beside the model's."""
    return recodes(mode) or resamples(mode)


def without_codec(mode: str) -> str:
    """``mode`` less its JPEG stage: what it computes for an image that was not a JPEG file
    (the stage passes such an image unchanged, so its losses are the same, bit for bit)."""
    stages = tuple(s for s in stage_names(mode) if s != "jpeg")
    return next(m for m in ROBUST_MODES if stage_names(m) == stages)


def codec_table(codecs: Any, n: int) -> np.ndarray:
    """Per-image JPEG specs ``[n, SPEC_SIZE]``: ``codecs`` checked, or all identity when None."""
    if codecs is None:
        return np.broadcast_to(identity_spec(), (n, SPEC_SIZE)).copy()
    table = np.asarray(codecs, np.float32)
    if table.shape != (n, SPEC_SIZE):
        raise ValueError(f"codecs must be [{n}, {SPEC_SIZE}] (one JPEG spec per image), got {table.shape}")
    return table


def _stage_size(stage: str, channels: int) -> int:
    """Parameters of one stage: the tone map's C x C matrix, C offsets and C gammas; the
    kernel's one blend weight; none for the codec (its tables are the file's)."""
    return {"tone": channels * channels + 2 * channels, "blur": 1, "jpeg": 0,
            "resample": 3 + RESAMPLE_TAPS}[stage]


def phi_size(mode: str, channels: int) -> int:
    """Number of post-processing parameters of ``mode`` for images of ``channels`` channels."""
    return sum(_stage_size(s, channels) for s in stage_names(mode))


def blur_kernel(s: jax.Array) -> jax.Array:
    """The 3x3 kernel ``delta + s (B - delta)`` (weights sum to 1)."""
    return jnp.asarray(_DELTA, s.dtype) + s * jnp.asarray(_BLUR - _DELTA, s.dtype)


def apply_blur(images: jax.Array, raw: jax.Array) -> jax.Array:
    """Images ``[N, H, W, C]`` through each one's kernel of ``raw`` ``[N, 1]`` (edges
    replicated)."""
    s = SHARPEN_BOUND * jnp.tanh(raw[:, 0])
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    kernels = jax.vmap(blur_kernel)(s)  # [N, 3, 3]
    out = jnp.zeros_like(images)
    for dy in range(3):
        for dx in range(3):
            out = out + kernels[:, dy, dx, None, None, None] * padded[:, dy : dy + h, dx : dx + w]
    return out


def apply_tone(images: jax.Array, raw: jax.Array) -> jax.Array:
    """Images ``[N, H, W, C]`` through each one's colour map of ``raw`` ``[N, C*C + 2C]``."""
    c = images.shape[-1]
    delta = MATRIX_BOUND * jnp.tanh(raw[:, : c * c]).reshape(-1, c, c)
    matrix = jnp.eye(c, dtype=images.dtype) + delta
    bias = BIAS_BOUND * jnp.tanh(raw[:, c * c : c * c + c])
    gamma = jnp.exp(GAMMA_LOG_BOUND * jnp.tanh(raw[:, c * c + c :]))
    mapped = jnp.einsum("nhwc,ndc->nhwd", images, matrix) + bias[:, None, None, :]
    # a floor above 0 keeps the power's gradient finite; 1e-6 is below 8-bit resolution
    return jnp.clip(mapped, 1e-6, 1.0) ** gamma[:, None, None, :]


@functools.lru_cache(maxsize=16)
def _downup_stack(h: int, w: int) -> tuple[np.ndarray, ...]:
    """The identity and every :func:`downup_sizes` hypothesis, as stacked per-axis matrices
    ``[K, n, n]``: (down along width, down along height, up along width, up along height)."""
    eye_h, eye_w = np.eye(h, dtype=np.float32), np.eye(w, dtype=np.float32)
    mats: list[list[np.ndarray]] = [[eye_w], [eye_h], [eye_w], [eye_h]]
    for mh, mw in downup_sizes(h, w):
        with jax.ensure_compile_time_eval():  # constants, even when called under a trace
            dw, uw = downup_matrices(w, mw)
            dh, uh = downup_matrices(h, mh)
        for out, m in zip(mats, (dw, dh, uw, uh), strict=True):
            out.append(np.asarray(m, np.float32))
    return tuple(np.stack(m) for m in mats)


def apply_resample(images: jax.Array, raw: jax.Array, targets: jax.Array | None,
                   resize_cost: jax.Array | None = None) -> jax.Array:
    """Images ``[N, H, W, C]`` zoomed/shifted and filtered by each one's ``raw`` ``[N, 6]``
    (log zoom, shift y, shift x, 3 kernel taps), then downscaled and upscaled back at the
    size, of the identity and every :func:`~ronan_jax.engine.resample.downup_sizes`
    hypothesis that best explains each one's ``targets``: the smallest misfit plus the
    change that resizing the target itself at that size makes (an image upscaled from a
    size barely changes; a sharp one changes a lot, so a blurring size cannot win on a sharp
    image just because a blurred fit is easier early in the descent; the identity costs 0
    and wins ties). All sizes are computed each step; the choice is not differentiated,
    the chosen image is. ``targets`` None: no downscale. ``resize_cost``: the targets'
    :func:`resize_costs`, when computed once already."""
    images = _zoom_and_filter(images, raw)
    if targets is None:
        return images
    x, best = _size_choice(images, targets, resize_cost)
    return jnp.take_along_axis(x, best[:, None, None, None, None], axis=1)[:, 0]


def _zoom_and_filter(images: jax.Array, raw: jax.Array) -> jax.Array:
    """The resample stage before its resize: zoom/shift and the symmetric kernel."""
    _, h, w, _ = images.shape
    raw = RESAMPLE_RATE * raw  # geometry and kernel settle slowly: early z gradients are noisy
    zoom = jnp.exp(ZOOM_LOG_BOUND * jnp.tanh(raw[:, 0]))
    shift_y = SHIFT_BOUND * h * jnp.tanh(raw[:, 1])
    shift_x = SHIFT_BOUND * w * jnp.tanh(raw[:, 2])
    taps = TAPS_BOUND * jnp.tanh(raw[:, 3 : 3 + RESAMPLE_TAPS])
    along_w = jax.vmap(lambda z, t, k: taps_matrix(w, k) @ zoom_matrix(w, z, t))(zoom, shift_x, taps)
    along_h = jax.vmap(lambda z, t, k: taps_matrix(h, k) @ zoom_matrix(h, z, t))(zoom, shift_y, taps)
    return apply_along(apply_along(images, along_w, 2), along_h, 1)  # Pillow: width first


def _size_choice(images: jax.Array, targets: jax.Array,
                 resize_cost: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(x, best)``: ``images`` resized down and back at every size ``[N, K, H, W, C]``
    and the index ``[N]`` of the size that best explains each target (0: the identity)."""
    _, h, w, _ = images.shape
    stack = tuple(jnp.asarray(m, images.dtype) for m in _downup_stack(h, w))
    x = _downup_all(images, stack)  # [N, K, H, W, C]
    targets = jax.lax.stop_gradient(targets.astype(x.dtype))
    misfit = jnp.mean((x - targets[:, None]) ** 2, axis=(2, 3, 4))
    if resize_cost is None:
        resize_cost = resize_costs(targets)
    return x, jax.lax.stop_gradient(jnp.argmin(misfit + resize_cost, axis=1))


def _downup_all(images: jax.Array, stack: tuple[jax.Array, ...]) -> jax.Array:
    """``[N, K, H, W, C]``: images resized down and back at each size of ``stack`` (Pillow's
    passes: width, then height, each clipped to [0, 1] like 8 bits)."""
    down_w, down_h, up_w, up_h = stack
    x = jnp.clip(jnp.einsum("kvw,nhwc->nkhvc", down_w, images), 0.0, 1.0)
    x = jnp.clip(jnp.einsum("kuh,nkhvc->nkuvc", down_h, x), 0.0, 1.0)
    x = jnp.clip(jnp.einsum("kvw,nkhwc->nkhvc", up_w, x), 0.0, 1.0)
    return jnp.clip(jnp.einsum("kuh,nkhvc->nkuvc", up_h, x), 0.0, 1.0)


def resize_costs(targets: jax.Array) -> jax.Array:
    """``[N, K]``: the mean squared change each target ``[N, H, W, C]`` undergoes when resized
    down and back at each of the resample stage's sizes (the identity first: 0)."""
    _, h, w, _ = targets.shape
    targets = jnp.asarray(targets, jnp.float32)
    stack = tuple(jnp.asarray(m) for m in _downup_stack(h, w))
    return jnp.mean((_downup_all(targets, stack) - targets[:, None]) ** 2, axis=(2, 3, 4))


_resize_costs_jit = jax.jit(resize_costs)


def _stage_parts(mode: str, phi: jax.Array, channels: int) -> Iterator[tuple[str, Any]]:
    """Each stage of ``mode`` in order with its slice of ``phi`` ``[N, P]`` (the codec has
    none: None)."""
    offset = 0
    for stage in stage_names(mode):
        if stage == "jpeg":
            yield stage, None
            continue
        n = _stage_size(stage, channels)
        yield stage, phi[:, offset : offset + n]
        offset += n


def postprocess(mode: str, images: jax.Array, phi: jax.Array, codecs: Any = None,
                targets: Any = None, resize_cost: Any = None) -> jax.Array:
    """``T_phi(images)``: the stages of ``mode`` with their parameters ``phi`` ``[N, P]``;
    for the codec, each image's JPEG spec ``codecs`` ``[N, SPEC_SIZE]`` (None: none was a
    JPEG file); for the resample stage, the images being inverted ``targets`` (None: no
    downscale is tried) and optionally their :func:`resize_costs`."""
    for stage, part in _stage_parts(mode, phi, images.shape[-1]):
        if stage == "jpeg":
            table = codec_table(None, images.shape[0]) if codecs is None else codecs
            images = jpeg_roundtrip(images, jnp.asarray(table))
        elif stage == "resample":
            images = apply_resample(images, part, targets, resize_cost)
        else:
            images = (apply_blur if stage == "blur" else apply_tone)(images, part)
    return images


def _resample_choice(mode: str, images: jax.Array, phi: jax.Array, targets: jax.Array,
                     resize_cost: jax.Array | None) -> jax.Array:
    """``[N]``: the index of the size ``mode``'s resample stage picks for each image (0: the
    identity), the stages before it applied as :func:`postprocess` applies them."""
    for stage, part in _stage_parts(mode, phi, images.shape[-1]):
        if stage == "resample":
            return _size_choice(_zoom_and_filter(images, part), targets, resize_cost)[1]
        if stage != "jpeg":
            images = (apply_blur if stage == "blur" else apply_tone)(images, part)
    raise ValueError(f"robust mode {mode!r} has no resample stage")


def robust_condition(mode: str, condition: Any, n: int, codecs: Any = None,
                     targets: Any = None) -> Any:
    """The per-image condition of ``mode``'s wrapped generator for ``n`` images: the model's
    own ``condition``, with each image's JPEG spec when the mode re-codes and its target
    pixels and their :func:`resize_costs` when it resamples (a dict then; the bare condition
    otherwise)."""
    if not _per_image(mode):
        return condition
    out = {"inner": condition}
    if recodes(mode):
        out["codecs"] = codec_table(codecs, n)
    if resamples(mode):
        if targets is None or np.shape(targets)[0] != n:
            raise ValueError(f"robust mode {mode!r} needs the {n} target images")
        out["targets"] = np.asarray(targets, np.float32)
        # once, not per step; a few images at a time (each holds every size's resized copy)
        out["resize_cost"] = np.concatenate(
            [np.asarray(_resize_costs_jit(out["targets"][i : i + 16])) for i in range(0, n, 16)]
            or [np.zeros((0, len(downup_sizes(*np.shape(targets)[1:3])) + 1), np.float32)])
    return out


def _split_condition(mode: str, condition: Any) -> tuple[Any, Any, Any, Any]:
    """``(model's condition, codecs, targets, resize_cost)`` of a robust condition (None
    where the mode or the condition has none)."""
    if not _per_image(mode):
        return condition, None, None, None
    return (condition["inner"], condition.get("codecs"), condition.get("targets"),
            condition.get("resize_cost"))


@dataclasses.dataclass(frozen=True)
class _RobustApply:
    """``apply_fn`` of a robust generator: splits ``[z, phi]``, renders ``G(z)`` and
    post-processes it; hashable by value so equal wrappers share a compiled program."""

    inner: Any
    mode: str
    input_shape: tuple[int, ...]
    channels: int

    def __call__(self, params: Any, inputs: jax.Array, condition: Any) -> jax.Array:
        images, phi, (codecs, targets, resize_cost) = self._render(params, inputs, condition)
        return postprocess(self.mode, images, phi, codecs, targets, resize_cost)

    def resample_choice(self, params: Any, inputs: jax.Array, condition: Any) -> jax.Array:
        """``[N]``: the resample stage's size index per image at ``inputs``."""
        images, phi, (_, targets, resize_cost) = self._render(params, inputs, condition)
        return _resample_choice(self.mode, images, phi, targets, resize_cost)

    def _render(self, params: Any, inputs: jax.Array, condition: Any) -> tuple[Any, Any, Any]:
        """``(G(z), phi, (codecs, targets, resize_cost))`` of robust ``inputs``."""
        k = math.prod(self.input_shape)
        z = inputs[:, :k].reshape((-1, *self.input_shape))
        condition, *per_image = _split_condition(self.mode, condition)
        images = self.inner(params, z, condition)
        return images, inputs[:, k:].astype(images.dtype), tuple(per_image)


@dataclasses.dataclass(frozen=True)
class _RobustPrior:
    """The inner prior's draws, flattened, then ``phi = 0`` (the identity)."""

    inner: Any
    input_shape: tuple[int, ...]
    extra: int

    def __call__(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        lead = shape[:-1]
        z = self.inner(key, (*lead, *self.input_shape))
        flat = z.reshape((*lead, math.prod(self.input_shape)))
        return jnp.concatenate([flat, jnp.zeros((*lead, self.extra), flat.dtype)], axis=-1)


@dataclasses.dataclass(frozen=True)
class _RobustEncode:
    """The inner encoder's input estimate, flattened, then ``phi = 0``."""

    inner: Any
    extra: int
    mode: str = "tone"

    def __call__(self, params: Any, images: jax.Array, condition: Any) -> jax.Array:
        condition = _split_condition(self.mode, condition)[0]
        z = self.inner(params, images, condition)
        flat = z.reshape((z.shape[0], -1))
        return jnp.concatenate([flat, jnp.zeros((flat.shape[0], self.extra), flat.dtype)], axis=-1)


def robust_generator(generator: Generator, mode: str) -> Generator:
    """``generator`` inverted through the post-processing family ``mode`` ("off": itself).

    Its input is ``[z flattened, phi]``; its prior draws ``z`` exactly as ``generator``'s
    (same key, same values) with ``phi = 0``; its encoder, if any, estimates ``z`` and starts
    ``phi`` at 0. Name, weights and parameter hash are ``generator``'s: the mode is a result
    setting of the inversion, not a property of the model. A mode that re-codes as JPEG
    or resamples takes the condition :func:`robust_condition` makes; its fixed condition is
    ``generator``'s with the identity spec and no target (no downscale tried)."""
    if mode == "off":
        return generator
    shape = tuple(generator.input_shape)
    channels = generator.output_shape[2]
    extra = phi_size(mode, channels)
    encoder = generator.encoder
    if encoder is not None:
        encoder = _keep_hash(encoder, Encoder(_RobustEncode(encoder.apply_fn, extra, mode),
                                              encoder.params, encoder.info))
    condition = generator.condition
    if _per_image(mode):  # no target: the resample stage tries no downscale
        condition = {"inner": condition}
        if recodes(mode):
            condition["codecs"] = identity_spec()
    return _keep_hash(generator, generator.replace(
        condition=condition,
        apply_fn=_RobustApply(generator.apply_fn, mode, shape, channels),
        input_shape=(math.prod(shape) + extra,),
        prior=_RobustPrior(generator.prior, shape, extra),
        encoder=encoder,
        for_shape_fn=None,
        info={**generator.info, "robust": mode},
    ))


def _keep_hash(old: Any, new: Any) -> Any:
    """``new`` (same params as ``old``) with ``old``'s parameter hash, if computed already."""
    cached = old.__dict__.get("_param_hash")
    if cached is not None:
        object.__setattr__(new, "_param_hash", cached)
    return new


def inversion_generator(generator: Generator, config: InversionConfig) -> Generator:
    """The generator an inversion under ``config`` optimises: ``generator`` wrapped in
    ``config.robust``'s post-processing family (itself when "off")."""
    return robust_generator(generator, config.robust)


def split_inputs(generator: Generator, mode: str, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, phi)`` of robust inputs ``[N, K + P]`` of ``generator`` (the unwrapped one)."""
    shape = tuple(generator.input_shape)
    k = math.prod(shape)
    inputs = np.asarray(inputs)
    return inputs[:, :k].reshape((-1, *shape)), inputs[:, k:]


def resized_to(generator: Generator, mode: str, inputs: np.ndarray, condition: Any) -> np.ndarray:
    """``[N, 2]`` int: the (height, width) that ``mode``'s resample stage downscaled each
    image to and back, for robust inputs ``[N, K + P]`` of ``generator`` (the unwrapped one)
    under its robust ``condition`` (:func:`robust_condition`): the image's own size where
    it kept the identity, and ``(0, 0)`` for every image when ``mode`` has no resample stage
    or no targets. The choice the inversion made at its best input, so the evidence can say
    which resize it found."""
    inputs = np.asarray(inputs, np.float32)
    n = inputs.shape[0]
    h, w = generator.output_shape[:2]
    if not resamples(mode) or n == 0 or _split_condition(mode, condition)[2] is None:
        return np.zeros((n, 2), np.int32)
    sizes = np.array([(h, w), *downup_sizes(h, w)], np.int32)
    apply = robust_generator(generator, mode).apply_fn  # a _RobustApply
    out = []
    for lo in range(0, n, 16):  # each image holds every size's resized copy
        part = jax.tree_util.tree_map(lambda a, lo=lo: a[lo : lo + 16], condition)
        out.append(np.asarray(_resample_choice_jit(apply, generator.params,
                                                   inputs[lo : lo + 16], part)))
    return sizes[np.concatenate(out)]


_resample_choice_jit = jax.jit(lambda apply, params, inputs, condition:
                               apply.resample_choice(params, inputs, condition),
                               static_argnums=0)
