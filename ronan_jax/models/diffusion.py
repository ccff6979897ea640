"""Pixel-space diffusion samplers as Generators: deterministic DDIM and consistency models.

Both wrap :class:`ronan_jax.models.unet2d.UNet2D` and map their final sample to [0, 1] as the
diffusers pipelines do when saving, ``(x / 2 + 0.5).clip(0, 1)``.

**DDIM** (``"unet-ddim"``): diffusers ``DDIMPipeline`` with ``eta = 0``. The input is the
initial noise ``x_T`` of shape ``(H, W, C)`` (prior N(0, 1), as the pipeline draws it); the
``K`` denoising steps use ``DDIMScheduler``'s ``alphas_cumprod`` (``beta_schedule`` linear /
scaled_linear / squaredcos_cap_v2 or ``trained_betas``), its timestep spacing (leading with
``steps_offset``, trailing, linspace), ``set_alpha_to_one``, ``prediction_type`` (epsilon /
v_prediction / sample) and ``clip_sample``. Unsupported: ``thresholding``,
``rescale_betas_zero_snr`` (rejected loudly).

**Consistency model** (``"consistency"``): diffusers ``ConsistencyModelPipeline`` with
``CMStochasticIterativeScheduler``. The optimised input is the **unit-variance** noise
``z ~ N(0, I)`` (prior N(0, 1), like every generator here); the sampler starts from
``x = z * sigma_max`` (the scheduler's ``init_noise_sigma``), so inverting on ``z`` is exactly
inverting on ``x_T`` up to a constant factor, with Adam's step size meaning the same as for the
other generators. Each step evaluates::

    scaled = x / sqrt(sigma^2 + sigma_data^2)
    out = unet(scaled, 1000 * 0.25 * log(sigma + 1e-44), class_label)
    denoised = c_out(sigma) * out + c_skip(sigma) * x        (boundary-condition scalings)
    denoised = clip(denoised, -1, 1) if clip_denoised
    x = denoised + s_noise * noise_k * sqrt(clip(sigma_next, sigma_min, sigma_max)^2 - sigma_min^2)

One step (the default) is deterministic. Several steps (``timesteps``, e.g. ``[22, 0]`` for
openai's ImageNet-64 CD model, or ``num_inference_steps``) inject fresh noise between steps;
here that noise is *fixed*: drawn from a key stored in the generator's conditioning
(``noise_seed`` in the config), so the generator stays a deterministic function of ``z``.

The step loop is one ``lax.scan`` whose body is wrapped in ``jax.checkpoint`` (``remat``): the
backward pass keeps only each step's input sample and recomputes the UNet activations, so
memory is bounded by one UNet evaluation plus ``K`` samples.

The class label (``num_class_embeds`` models) is fixed conditioning: ``class_label`` in the
config, or given to ``make_*_generator``; the Generator's ``condition`` is
``{"class_labels": int32[]}`` (+ ``"noise_key"``: ``uint32[2]`` for multistep consistency),
broadcast over the batch by the engine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ronan_jax.engine.generator import Generator
from ronan_jax.models import unet2d
from ronan_jax.models.unet2d import UNet2D, UNet2DConfig

# --------------------------------------------------------------------------------------------
# DDIM


@dataclasses.dataclass(frozen=True)
class DDIMSchedulerConfig:
    """The ``DDIMScheduler`` config keys that matter for ``eta = 0`` sampling (diffusers
    names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"

    def __post_init__(self) -> None:
        if self.trained_betas is not None:
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"unsupported beta_schedule {self.beta_schedule!r}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"unsupported timestep_spacing {self.timestep_spacing!r}")

    # Keys of other schedulers' configs (DDPM, PNDM, DDIM extras) that eta = 0 DDIM ignores.
    IGNORABLE = (
        "variance_type",
        "skip_prk_steps",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "clip_sample_range_max",
        "timestep_type",
        "use_karras_sigmas",
    )
    # Keys DDIM honours in diffusers but this port does not implement: must be off.
    UNSUPPORTED = ("thresholding", "rescale_betas_zero_snr")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> tuple[DDIMSchedulerConfig, list[str]]:
        """From a diffusers scheduler config dict (DDIM, or DDPM/PNDM read as DDIM, as
        ``DDIMScheduler.from_config`` does). Returns the config and the keys ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs, ignored = {}, []
        for key, value in config.items():
            if key.startswith("_"):
                continue
            if key in known:
                kwargs[key] = value
            elif key in cls.UNSUPPORTED:
                if value:
                    raise ValueError(f"unsupported DDIM scheduler option {key}={value!r}")
            elif key in cls.IGNORABLE:
                ignored.append(key)
            else:
                raise ValueError(f"unknown scheduler config key {key!r}")
        return cls(**kwargs), ignored

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``trained_betas`` as a list) that the constructor reads back."""
        d = dataclasses.asdict(self)
        if d["trained_betas"] is not None:
            d["trained_betas"] = list(d["trained_betas"])
        return d


def _alpha_bar_cosine(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def alphas_cumprod(config: DDIMSchedulerConfig) -> np.ndarray:
    """float32 ``alphas_cumprod`` exactly as ``DDIMScheduler.__init__`` builds it."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, np.float32)
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float64)
        betas = betas.astype(np.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float64)
        betas = betas.astype(np.float32) ** 2
    else:  # squaredcos_cap_v2 (betas_for_alpha_bar, max_beta 0.999)
        betas = np.asarray(
            [
                min(1 - _alpha_bar_cosine((i + 1) / n) / _alpha_bar_cosine(i / n), 0.999)
                for i in range(n)
            ],
            np.float32,
        )
    return np.cumprod(np.float32(1.0) - betas, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
    """The per-step constants of a ``K``-step DDIM run (numpy, trace-time constants)."""

    timesteps: np.ndarray  # int64 [K], descending
    alpha_prod_t: np.ndarray  # float32 [K]
    alpha_prod_t_prev: np.ndarray  # float32 [K]


def ddim_schedule(config: DDIMSchedulerConfig, num_inference_steps: int) -> DDIMSchedule:
    """``DDIMScheduler.set_timesteps(K)`` and the alphas ``step`` looks up for each timestep
    (``prev_timestep = t - num_train_timesteps // K`` for every spacing, as diffusers)."""
    n, k = config.num_train_timesteps, int(num_inference_steps)
    if not 1 <= k <= n:
        raise ValueError(f"num_inference_steps must be in [1, {n}], got {k}")
    if config.timestep_spacing == "linspace":
        ts = np.linspace(0, n - 1, k).round()[::-1].copy().astype(np.int64)
    elif config.timestep_spacing == "leading":
        ratio = n // k
        ts = (np.arange(0, k) * ratio).round()[::-1].copy().astype(np.int64)
        ts += config.steps_offset
    else:  # trailing
        ts = np.round(np.arange(n, 0, -n / k)).astype(np.int64) - 1
    if ts.max() >= n or ts.min() < 0:
        raise ValueError(f"DDIM timesteps {ts.tolist()} fall outside [0, {n})")
    ac = alphas_cumprod(config)
    final = np.float32(1.0) if config.set_alpha_to_one else ac[0]
    prev = ts - n // k
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    return DDIMSchedule(ts, ac[ts].astype(np.float32), a_prev)


def ddim_step(
    config: DDIMSchedulerConfig,
    model_output: jax.Array,
    sample: jax.Array,
    alpha_prod_t: jax.Array,
    alpha_prod_t_prev: jax.Array,
) -> jax.Array:
    """``DDIMScheduler.step(..., eta=0).prev_sample``."""
    beta_prod_t = 1.0 - alpha_prod_t
    sqrt_a, sqrt_b = jnp.sqrt(alpha_prod_t), jnp.sqrt(beta_prod_t)
    if config.prediction_type == "epsilon":
        x0 = (sample - sqrt_b * model_output) / sqrt_a
        eps = model_output
    elif config.prediction_type == "sample":
        x0 = model_output
        eps = (sample - sqrt_a * x0) / sqrt_b
    else:  # v_prediction
        x0 = sqrt_a * sample - sqrt_b * model_output
        eps = sqrt_a * model_output + sqrt_b * sample
    if config.clip_sample:
        x0 = jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
    return jnp.sqrt(alpha_prod_t_prev) * x0 + jnp.sqrt(1.0 - alpha_prod_t_prev) * eps


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    """Everything a ``"unet-ddim"`` generator needs besides its weights."""

    unet: UNet2DConfig
    scheduler: DDIMSchedulerConfig = DDIMSchedulerConfig()
    num_inference_steps: int = 50  # DDIMPipeline's default
    class_label: int | None = None
    remat: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | DDIMConfig) -> DDIMConfig:
        """From :meth:`to_dict`'s dict (a model card's ``config``); a config passes through."""
        if isinstance(config, DDIMConfig):
            return config
        cfg = dict(config)
        cfg["unet"] = UNet2DConfig.from_dict(cfg["unet"])
        cfg["scheduler"] = DDIMSchedulerConfig(**cfg.get("scheduler", {}))
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that :meth:`from_dict` reads back (a model card's ``config``)."""
        return {
            "unet": self.unet.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "num_inference_steps": self.num_inference_steps,
            "class_label": self.class_label,
            "remat": self.remat,
        }


def _class_labels(condition: Any, n: int) -> jax.Array | None:
    if condition is None or "class_labels" not in condition:
        return None
    return jnp.broadcast_to(jnp.asarray(condition["class_labels"], jnp.int32).reshape(-1), (n,))


def _scan_steps(body, x: jax.Array, xs: Any, remat: bool) -> jax.Array:
    if remat:
        body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, xs)
    return x


def to_unit_interval(x: jax.Array) -> jax.Array:
    """The pipelines' post-processing ``(x / 2 + 0.5).clamp(0, 1)``."""
    return jnp.clip(x / 2.0 + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DDIMApply:
    """Pure ``apply(variables, x_T[N, H, W, C], condition) -> [N, H, W, C]`` in [0, 1].
    Frozen and hashable, so equal configs share compiled programs."""

    config: DDIMConfig

    def sample(self, variables: Any, x_t: jax.Array, condition: Any) -> jax.Array:
        """The final DDIM sample in the model's range (before mapping to [0, 1])."""
        cfg = self.config
        sched = ddim_schedule(cfg.scheduler, cfg.num_inference_steps)
        unet = UNet2D(cfg.unet)
        n = x_t.shape[0]
        labels = _class_labels(condition, n)

        def body(x, step):
            t, a_t, a_prev = step
            out = unet.apply(variables, x, jnp.broadcast_to(t, (n,)), labels)
            return ddim_step(cfg.scheduler, out, x, a_t, a_prev), None

        xs = (
            jnp.asarray(sched.timesteps, jnp.float32),
            jnp.asarray(sched.alpha_prod_t),
            jnp.asarray(sched.alpha_prod_t_prev),
        )
        return _scan_steps(body, x_t.astype(jnp.float32), xs, cfg.remat)

    def __call__(self, variables: Any, x_t: jax.Array, condition: Any) -> jax.Array:
        return to_unit_interval(self.sample(variables, x_t, condition))


# --------------------------------------------------------------------------------------------
# Consistency models


@dataclasses.dataclass(frozen=True)
class CMSchedulerConfig:
    """``CMStochasticIterativeScheduler``'s config (diffusers names and defaults)."""

    num_train_timesteps: int = 40
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    s_noise: float = 1.0
    rho: float = 7.0
    clip_denoised: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> CMSchedulerConfig:
        """From a diffusers scheduler config dict; private ``_keys`` are dropped, unknown
        keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown CMStochasticIterativeScheduler config keys: {unknown}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CMSchedule:
    """The per-step constants of a consistency-model run (numpy, trace-time constants)."""

    sigmas: np.ndarray  # float32 [K + 1]: the K step sigmas, then sigma_min
    timesteps: np.ndarray  # float64 [K]: the UNet's timestep input per step


def cm_schedule(
    config: CMSchedulerConfig,
    timesteps: Sequence[int] | None = None,
    num_inference_steps: int | None = None,
) -> CMSchedule:
    """``CMStochasticIterativeScheduler.set_timesteps`` (Karras sigmas, ``sigma_to_t``)."""
    n = config.num_train_timesteps
    if (timesteps is None) == (num_inference_steps is None):
        raise ValueError("give exactly one of timesteps or num_inference_steps")
    if timesteps is not None:
        ts = np.asarray(list(timesteps), np.int64)
        if ts.size == 0 or np.any(np.diff(ts) >= 0):
            raise ValueError(f"timesteps must be non-empty and descending, got {ts.tolist()}")
        if ts[0] >= n:
            raise ValueError(f"timesteps must start before num_train_timesteps {n}")
    else:
        k = int(num_inference_steps)
        if not 1 <= k <= n:
            raise ValueError(f"num_inference_steps must be in [1, {n}], got {k}")
        ts = (np.arange(0, k) * (n // k)).round()[::-1].copy().astype(np.int64)
    ramp = ts[::-1].copy() / (n - 1)
    min_inv_rho = config.sigma_min ** (1 / config.rho)
    max_inv_rho = config.sigma_max ** (1 / config.rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** config.rho
    model_t = 1000 * 0.25 * np.log(sigmas + 1e-44)
    sigmas = np.concatenate([sigmas, [config.sigma_min]]).astype(np.float32)
    return CMSchedule(sigmas, model_t)


@dataclasses.dataclass(frozen=True)
class ConsistencyConfig:
    """Everything a ``"consistency"`` generator needs besides its weights."""

    unet: UNet2DConfig
    scheduler: CMSchedulerConfig = CMSchedulerConfig()
    timesteps: tuple[int, ...] | None = None  # custom descending timesteps (multistep)
    num_inference_steps: int = 1  # used when timesteps is None
    class_label: int | None = None
    noise_seed: int = 0  # key of the fixed noise injected between steps (multistep only)
    remat: bool = True

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))

    @property
    def schedule(self) -> CMSchedule:
        """The run's sigmas and UNet timesteps: the custom ``timesteps`` if set, else
        ``num_inference_steps`` evenly spaced ones."""
        if self.timesteps is not None:
            return cm_schedule(self.scheduler, timesteps=self.timesteps)
        return cm_schedule(self.scheduler, num_inference_steps=self.num_inference_steps)

    @property
    def num_steps(self) -> int:
        """Number of UNet evaluations per sample (more than one injects fixed noise between)."""
        return len(self.schedule.timesteps)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | ConsistencyConfig) -> ConsistencyConfig:
        """From :meth:`to_dict`'s dict (a model card's ``config``); a config passes through."""
        if isinstance(config, ConsistencyConfig):
            return config
        cfg = dict(config)
        cfg["unet"] = UNet2DConfig.from_dict(cfg["unet"])
        cfg["scheduler"] = CMSchedulerConfig.from_dict(cfg.get("scheduler", {}))
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "timesteps": None if self.timesteps is None else list(self.timesteps),
            "num_inference_steps": self.num_inference_steps,
            "class_label": self.class_label,
            "noise_seed": self.noise_seed,
            "remat": self.remat,
        }


def noise_key_data(seed: int) -> np.ndarray:
    """The raw ``uint32`` key data of the multistep noise key (what the condition stores)."""
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


def cm_step_noise(key_data: jax.Array, step: jax.Array | int, shape: tuple[int, ...]) -> jax.Array:
    """The fixed noise injected after step ``step`` for one image (NHWC ``shape`` without
    batch), from one image's ``noise_key`` condition."""
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
    return jax.random.normal(key, shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class ConsistencyApply:
    """Pure ``apply(variables, z[N, H, W, C], condition) -> [N, H, W, C]`` in [0, 1], where
    ``z`` is unit-variance noise (``x_T = z * sigma_max``)."""

    config: ConsistencyConfig

    def sample(self, variables: Any, z: jax.Array, condition: Any) -> jax.Array:
        """The final consistency sample in the model's range (before mapping to [0, 1])."""
        cfg = self.config
        sc = cfg.scheduler
        sched = cfg.schedule
        k = len(sched.timesteps)
        unet = UNet2D(cfg.unet)
        n = z.shape[0]
        labels = _class_labels(condition, n)
        # Per-step scalars in float32, as the scheduler computes them on float32 sigmas.
        sigma = sched.sigmas[:k]
        sigma_next = sched.sigmas[1:]
        sd, smin, smax = np.float32(sc.sigma_data), np.float32(sc.sigma_min), np.float32(sc.sigma_max)
        c_in = np.float32(1.0) / (sigma**2 + sd**2) ** np.float32(0.5)
        c_skip = sd**2 / ((sigma - smin) ** 2 + sd**2)
        c_out = (sigma - smin) * sd / (sigma**2 + sd**2) ** np.float32(0.5)
        sigma_hat = np.clip(sigma_next, smin, smax)
        noise_scale = np.float32(sc.s_noise) * (sigma_hat**2 - smin**2) ** np.float32(0.5)
        if k > 1:
            if condition is None or "noise_key" not in condition:
                raise ValueError("a multistep consistency generator needs a noise_key condition")
            key_data = jnp.asarray(condition["noise_key"])
            keys = jnp.broadcast_to(key_data, (n, key_data.shape[-1]))

        def body(x, step):
            i, t, a_in, a_skip, a_out, a_noise = step
            out = unet.apply(variables, x * a_in, jnp.broadcast_to(t, (n,)), labels)
            x0 = a_out * out + a_skip * x
            if sc.clip_denoised:
                x0 = jnp.clip(x0, -1.0, 1.0)
            if k > 1:
                noise = jax.vmap(lambda kd: cm_step_noise(kd, i, x.shape[1:]))(keys)
                x0 = x0 + noise * a_noise
            return x0, None

        xs = (
            jnp.arange(k, dtype=jnp.int32),
            jnp.asarray(sched.timesteps, jnp.float32),
            *(jnp.asarray(a, jnp.float32) for a in (c_in, c_skip, c_out, noise_scale)),
        )
        x_t = z.astype(jnp.float32) * jnp.float32(sc.sigma_max)
        return _scan_steps(body, x_t, xs, cfg.remat)

    def __call__(self, variables: Any, z: jax.Array, condition: Any) -> jax.Array:
        return to_unit_interval(self.sample(variables, z, condition))


# --------------------------------------------------------------------------------------------
# Generators


def fixed_condition(unet: UNet2DConfig, class_label: int | None) -> dict[str, Any]:
    """The fixed conditioning of one image (``{"class_labels": int32[]}`` or ``{}``).

    A class-conditional UNet without ``class_label`` has no fixed class: its generator is
    conditional, with each image's class given to the engine (``Generator.num_classes``).
    Raises ``ValueError`` for a label out of range, or one given to an unconditional UNet."""
    if unet.num_class_embeds is not None:
        if class_label is None:
            return {}
        if not 0 <= int(class_label) < unet.num_class_embeds:
            raise ValueError(f"class_label {class_label} outside [0, {unet.num_class_embeds})")
        return {"class_labels": np.asarray(class_label, np.int32)}
    if class_label is not None:
        raise ValueError("class_label given but the UNet has no class embedding")
    return {}


_SamplerConfig = TypeVar("_SamplerConfig", DDIMConfig, ConsistencyConfig)


def _with_class_label(cfg: _SamplerConfig, class_label: int | None) -> _SamplerConfig:
    """``cfg`` with its fixed class set to ``class_label`` when one is given: the argument
    of ``make_*_generator`` overrides the config's ``class_label``."""
    if class_label is None:
        return cfg
    return dataclasses.replace(cfg, class_label=int(class_label))


def _generator(
    apply_fn: Any,
    unet: UNet2DConfig,
    variables: Any,
    condition: dict[str, Any],
    name: str,
    info: dict[str, Any],
    shape: tuple[int, int] | None = None,
) -> Generator:
    h, w = shape or unet.image_hw
    f = unet.downsample_factor
    if h % f or w % f:
        raise ValueError(f"image sides must be multiples of {f} for this UNet, got {(h, w)}")
    per_image_class = unet.num_class_embeds is not None and "class_labels" not in condition
    return Generator(
        name=name,
        apply_fn=apply_fn,
        params=variables,
        input_shape=(h, w, unet.in_channels),
        output_shape=(h, w, unet.out_channels),
        condition=condition or None,
        for_shape_fn=lambda s: _generator(
            apply_fn, unet, variables, condition, name, info, (int(s[0]), int(s[1]))
        ),
        info=info,
        num_classes=unet.num_class_embeds if per_image_class else 0,
        class_condition=functools.partial(_class_conditions, condition) if per_image_class else None,
    )


def _class_conditions(fixed: dict[str, Any], class_ids: jax.Array) -> dict[str, Any]:
    """Per-image conditions of a class-conditional UNet: the model's fixed entries (the
    multistep noise key) broadcast to the batch, plus each image's class."""
    n = class_ids.shape[0]
    out = {k: jnp.broadcast_to(jnp.asarray(v), (n, *np.shape(v))) for k, v in fixed.items()}
    out["class_labels"] = jnp.asarray(class_ids, jnp.int32)
    return out


def init_ddim_variables(config: Mapping[str, Any] | DDIMConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh UNet variables of a ``"unet-ddim"`` generator (the scheduler has none)."""
    return unet2d.init_variables(DDIMConfig.from_dict(config).unet, key)


def make_ddim_generator(
    config: Mapping[str, Any] | DDIMConfig,
    variables: Any,
    name: str = "unet-ddim",
    class_label: int | None = None,
    **info: Any,
) -> Generator:
    """A DDIM (eta = 0) generator; input: initial noise ``x_T`` (H, W, C), prior N(0, 1)."""
    cfg = _with_class_label(DDIMConfig.from_dict(config), class_label)
    ddim_schedule(cfg.scheduler, cfg.num_inference_steps)  # validate early
    cond = fixed_condition(cfg.unet, cfg.class_label)
    info = {"architecture": "unet-ddim", "config": cfg.to_dict(), **info}
    return _generator(DDIMApply(cfg), cfg.unet, variables, cond, name, info)


def init_consistency_variables(
    config: Mapping[str, Any] | ConsistencyConfig, key: jax.Array
) -> dict[str, Any]:
    """Fresh UNet variables of a ``"consistency"`` generator (the scheduler has none)."""
    return unet2d.init_variables(ConsistencyConfig.from_dict(config).unet, key)


def make_consistency_generator(
    config: Mapping[str, Any] | ConsistencyConfig,
    variables: Any,
    name: str = "consistency",
    class_label: int | None = None,
    **info: Any,
) -> Generator:
    """A consistency-model generator; input: unit-variance noise ``z`` (H, W, C), prior
    N(0, 1), scaled by ``sigma_max`` inside."""
    cfg = _with_class_label(ConsistencyConfig.from_dict(config), class_label)
    cond = fixed_condition(cfg.unet, cfg.class_label)
    if cfg.num_steps > 1:
        cond["noise_key"] = noise_key_data(cfg.noise_seed)
    info = {"architecture": "consistency", "config": cfg.to_dict(), **info}
    return _generator(ConsistencyApply(cfg), cfg.unet, variables, cond, name, info)


__all__ = [
    "CMSchedulerConfig",
    "ConsistencyApply",
    "ConsistencyConfig",
    "DDIMApply",
    "DDIMConfig",
    "DDIMSchedulerConfig",
    "alphas_cumprod",
    "cm_schedule",
    "cm_step_noise",
    "ddim_schedule",
    "ddim_step",
    "fixed_condition",
    "init_consistency_variables",
    "init_ddim_variables",
    "make_consistency_generator",
    "make_ddim_generator",
    "noise_key_data",
]
