"""Train a model's encoder on the model's own samples, resumably, and store it with the model.

The encoder ``E`` learns to undo the frozen generator ``G``: for inputs ``z`` drawn from the
generator's prior (and, for a class-conditional model, uniformly drawn classes) it sees
``x = G(z)`` and minimises

    latent_weight * mean((E(x) - z)^2) + recon_weight * mean((G(E(x)) - x)^2)

(latent regression plus reconstruction through the generator). Optional real images add a
reconstruction-only term: a reference model, which inverts images it never made, learns
from them where its samples alone would leave it blind. The reconstruction term is what an
inversion needs: a start whose output is already near the image.

Training state (encoder and Adam state, step) is written every ``save_every`` steps under
``<model>/encoder-training/``; a run with the same settings resumes from it and ends exactly
as an uninterrupted one (every batch is drawn from ``fold_in(seed, step)``). The finished
encoder is written into the checkpoint (:func:`ronan_jax.models.checkpoint.save_encoder`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ronan_jax.engine.generator import Generator
from ronan_jax.models import encoder as encoder_model
from ronan_jax.models.checkpoint import CheckpointError, load_generator, read_card, save_encoder

STATE_DIR = "encoder-training"
STATE_FILE = "state.npz"
META_FILE = "meta.json"

Progress = Callable[[int, int, dict[str, float]], None]


@dataclasses.dataclass(frozen=True)
class EncoderTraining:
    """Settings of an encoder's training (recorded in the model card's ``encoder.training``)."""

    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3
    latent_weight: float = 1.0
    recon_weight: float = 10.0
    seed: int = 0
    save_every: int = 200
    real_batch: int = 32  # real images per step, when real images are given

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.save_every < 1 or self.real_batch < 1:
            raise ValueError("steps, batch, real_batch and save_every must be >= 1")
        if not self.lr > 0 or self.latent_weight < 0 or self.recon_weight < 0:
            raise ValueError("lr must be > 0 and the loss weights >= 0")

    def result_dict(self) -> dict[str, Any]:
        """What decides the trained weights (``save_every`` does not)."""
        out = dataclasses.asdict(self)
        out.pop("save_every")
        return out


@dataclasses.dataclass(frozen=True)
class TrainedEncoder:
    """The outcome of :func:`train_encoder`: the card entry written, and the last losses."""

    entry: dict[str, Any]
    resumed_from: int
    final: dict[str, float]
    seconds: float


def _sample_conditions(gen: Generator, key: jax.Array, n: int) -> Any:
    if gen.num_classes:
        return gen.conditions_for_classes(jax.random.randint(key, (n,), 0, gen.num_classes))
    return gen.batched_condition(n)


def _step_fn(gen: Generator, apply_enc: Callable, optimizer: optax.GradientTransformation,
             settings: EncoderTraining) -> Callable:
    def loss_fn(enc_params: Any, key: jax.Array, real: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        kz, kc = jax.random.split(key)
        z = gen.sample_inputs(kz, settings.batch).astype(jnp.float32)
        cond = _sample_conditions(gen, kc, settings.batch)
        x = jax.lax.stop_gradient(gen.apply_fn(gen.params, z, cond).astype(jnp.float32))
        z_hat = apply_enc(enc_params, x, cond)
        latent = jnp.mean((z_hat - z) ** 2)
        recon = jnp.mean((gen.apply_fn(gen.params, z_hat, cond).astype(jnp.float32) - x) ** 2)
        total = settings.latent_weight * latent + settings.recon_weight * recon
        metrics = {"latent": latent, "recon": recon}
        if real is not None:
            rc = _sample_conditions(gen, kc, real.shape[0])
            r_hat = gen.apply_fn(gen.params, apply_enc(enc_params, real, rc), rc).astype(jnp.float32)
            real_recon = jnp.mean((r_hat - real) ** 2)
            total = total + settings.recon_weight * real_recon
            metrics["real_recon"] = real_recon
        return total, metrics

    def step(enc_params: Any, opt_state: Any, key: jax.Array, real: jax.Array | None) -> tuple[Any, Any, dict]:
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(enc_params, key, real)
        # optax's bias correction mixes Python floats with its int32 count: standard
        # promotion inside the update only (the project runs strict promotion elsewhere).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, enc_params)
        return optax.apply_updates(enc_params, updates), opt_state, metrics

    return jax.jit(step)


def _save_state(state_dir: Path, tree: Any, step: int, meta: dict[str, Any]) -> None:
    """Write the training state as plain arrays (no pickle) and its meta, atomically."""
    state_dir.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(tree)
    tmp = state_dir / (STATE_FILE + ".tmp.npz")
    np.savez(tmp, *[np.asarray(leaf) for leaf in leaves])
    tmp.replace(state_dir / STATE_FILE)
    meta_tmp = state_dir / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True))
    meta_tmp.replace(state_dir / META_FILE)


def _load_state(state_dir: Path, template: Any, meta: dict[str, Any]) -> tuple[Any, int] | None:
    """The saved state when it exists and was made with the same settings, else None."""
    meta_path, state_path = state_dir / META_FILE, state_dir / STATE_FILE
    if not (meta_path.is_file() and state_path.is_file()):
        return None
    try:
        saved = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return None
    if {k: v for k, v in saved.items() if k != "step"} != meta:
        return None
    with np.load(state_path, allow_pickle=False) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(arrays) != len(leaves) or any(a.shape != np.shape(b) for a, b in zip(arrays, leaves, strict=True)):
        return None
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays]), int(saved["step"])


def train_encoder(
    model_dir: str | Path,
    settings: EncoderTraining | None = None,
    real_images: np.ndarray | None = None,
    real_name: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    config: encoder_model.EncoderConfig | None = None,
) -> TrainedEncoder:
    """Train the encoder of the checkpoint at ``model_dir`` and store it there.

    Refuses a model whose encoder already ships unless ``force`` (which retrains from
    scratch). Resumes from ``<model_dir>/encoder-training/`` when that holds a run with the
    same settings. ``real_images`` (``[N, H, W, C]`` in [0, 1], the model's output size) add
    the reconstruction-only term; ``real_name`` names them in the card. ``progress`` is called
    as ``(step, steps, losses)`` every 50 steps (every ``save_every`` if fewer) and at the end.
    """
    settings = settings or EncoderTraining()
    model_dir = Path(model_dir).absolute()
    card = read_card(model_dir)
    if card.get("encoder") is not None and not force:
        raise CheckpointError(
            f"{model_dir} already ships an encoder ({str(card['encoder'].get('param_hash'))[:12]}); "
            "pass --force to train a new one"
        )
    gen = load_generator(model_dir).replace(encoder=None)
    config = config or encoder_model.default_config(gen.output_shape, gen.input_shape)
    if tuple(config.image_shape) != tuple(gen.output_shape) or tuple(config.input_shape) != tuple(gen.input_shape):
        raise ValueError(f"encoder config {config} does not fit the model "
                         f"({gen.output_shape} images, input {gen.input_shape})")
    if real_images is not None:
        real_images = np.asarray(real_images, np.float32)
        if real_images.ndim != 4 or tuple(real_images.shape[1:]) != tuple(gen.output_shape):
            raise ValueError(f"real images must be [N, {', '.join(map(str, gen.output_shape))}], "
                             f"got {real_images.shape}")
    meta = {
        "model_param_hash": gen.param_hash,
        "config": config.to_dict(),
        "settings": settings.result_dict(),
        "real": None if real_images is None else {"name": real_name, "n": int(real_images.shape[0])},
    }
    state_dir = model_dir / STATE_DIR
    optimizer = optax.adam(settings.lr)
    init_key, key = jax.random.split(jax.random.key(settings.seed))
    enc_params = encoder_model.init_variables(config, init_key)
    opt_state = optimizer.init(enc_params)
    loaded = _load_state(state_dir, (enc_params, opt_state), meta)
    start = 0
    if loaded is not None:
        (enc_params, opt_state), start = loaded
    step = _step_fn(gen, encoder_model.EncoderApply(config), optimizer, settings)
    real_dev = None if real_images is None else jnp.asarray(real_images)
    rng = np.random.default_rng(settings.seed)  # real-batch picks, replayed to the resume step
    if real_dev is not None:
        for _ in range(start):
            rng.integers(0, real_images.shape[0], settings.real_batch)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    for i in range(start, settings.steps):
        real = None
        if real_dev is not None:
            real = real_dev[rng.integers(0, real_images.shape[0], settings.real_batch)]
        enc_params, opt_state, metrics = step(enc_params, opt_state, jax.random.fold_in(key, i), real)
        done = i + 1
        if done % settings.save_every == 0 and done < settings.steps:
            _save_state(state_dir, (enc_params, opt_state), done, meta)
        if progress is not None and (done % min(50, settings.save_every) == 0 or done == settings.steps):
            progress(done, settings.steps, {k: float(v) for k, v in metrics.items()})
    final = {k: float(v) for k, v in metrics.items()}
    training = {**settings.result_dict(), "real": meta["real"], "final": final,
                "model_param_hash": gen.param_hash}
    entry = save_encoder(model_dir, config, enc_params, training=training, replace=force)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return TrainedEncoder(entry, start, final, time.perf_counter() - t0)
