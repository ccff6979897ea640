"""Train a zoo model from the offline data and save it as a checkpoint + card + sample grid.

Usage::

    python -m ronan_jax.zoo.train NAME [--steps N] [--out DIR] [--seed S] [--subset K]
                                       [--data DATASET] [--overwrite]

``NAME`` is a zoo model (:data:`ronan_jax.zoo.registry.MODELS`); its architecture, config,
training data and recipe (:data:`RECIPES`) come from the tables, so the command alone
reproduces a shipped model. ``--out`` defaults to the model's package weights directory.
``--data`` trains the same model on another dataset (e.g. ``mnist-overlap-0.7`` for the
overlap experiments); ``--subset K`` keeps the first K images (smoke tests).

Everything is float32 and deterministic from ``--seed`` (parameter init, batches, noise).
The whole training step (both GAN updates, or the VAE update) is one jitted function; the
progress bar reads losses back only every ``LOG_EVERY`` steps.

The output directory holds ``model_card.json`` + ``params/`` (:func:`save_generator`) and
``samples.png``: an 8x8 grid of 64 samples of the *saved* generator (reloaded from disk, in
inference mode), upscaled with nearest neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from ronan_jax.engine.generator import Generator
from ronan_jax.models import conv_decoder, dcgan, vae
from ronan_jax.models.checkpoint import CheckpointError, load_generator, read_card, save_generator
from ronan_jax.zoo import data as zoo_data
from ronan_jax.zoo.registry import SAMPLES_FILE, ZooModel, get, weights_dir

LOG_EVERY = 50
FINAL_WINDOW = 50  # final losses are means over the last this-many steps
GRID_SIDE = 8
GRID_PAD = 2
GRID_UPSCALE = 3


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """How a zoo model is trained.

    ``trainer``: ``"gan"`` (DCGAN, non-saturating BCE loss, optionally one-sided label
    smoothing ``real_label``) or ``"vae"`` (ELBO).
    ``likelihood`` (VAE): ``"bernoulli"`` (BCE on logits, for binary-ish digits) or
    ``"gaussian"`` (squared error / (2 sigma^2) with fixed ``sigma``, for photos).
    """

    trainer: str
    steps: int
    batch_size: int
    lr: float
    b1: float = 0.9
    likelihood: str = "bernoulli"
    sigma: float = 0.1
    convt_impl: str | None = "subpixel"  # training-only ConvTranspose formulation
    real_label: float = 1.0  # GAN: discriminator target for real images (< 1: smoothing)

    def training_config(self, config: Any) -> Any:
        """``config`` with the training-time ConvTranspose formulation, if it has one.

        The formulations are numerically equivalent with the same parameter layout (the
        shipped card keeps the registry's config); ``"subpixel"`` makes the backward pass
        several times faster on CPU than the input-dilated ``"lax"`` one.
        """
        if self.convt_impl and hasattr(config, "convt_impl"):
            return dataclasses.replace(config, convt_impl=self.convt_impl)
        return config


RECIPES: dict[str, TrainRecipe] = {
    "dcgan-mnist": TrainRecipe("gan", steps=3000, batch_size=32, lr=2e-4, b1=0.5),
    "dcgan-mnist-b": TrainRecipe("gan", steps=3000, batch_size=32, lr=2e-4, b1=0.5),
    "cdcgan-mnist": TrainRecipe("gan", steps=3000, batch_size=32, lr=2e-4, b1=0.5),
    "dcgan-photo": TrainRecipe("gan", steps=5000, batch_size=32, lr=2e-4, b1=0.5),
    "vae-mnist": TrainRecipe("vae", steps=2000, batch_size=64, lr=1e-3),
    "ref-photo": TrainRecipe(
        "vae", steps=1500, batch_size=32, lr=1e-3, likelihood="gaussian", sigma=0.1
    ),
}


# --------------------------------------------------------------------------- GAN


def _optax_promotion():
    """optax's Adam mixes Python scalars with its int32 step count (bias correction), which
    strict dtype promotion rejects; allow standard promotion inside optax updates only."""
    return jax.numpy_dtype_promotion("standard")


def _bce(logits: jax.Array, target: float) -> jax.Array:
    labels = jnp.full(logits.shape, target, logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def _gan_trainer(cfg: dcgan.DCGANConfig, recipe: TrainRecipe) -> tuple[Callable, Callable]:
    gen_model, disc_model = dcgan.DCGANGenerator(cfg), dcgan.DCGANDiscriminator(cfg)
    g_opt = optax.adam(recipe.lr, b1=recipe.b1)
    d_opt = optax.adam(recipe.lr, b1=recipe.b1)

    conditional = bool(cfg.num_classes)

    def init(key: jax.Array, data: Any) -> dict[str, Any]:
        images = data[0] if conditional else data
        g_key, d_key = jax.random.split(key)
        g_vars = dcgan.init_variables(cfg, g_key)
        label = jnp.zeros((1,), jnp.int32) if conditional else None
        d_vars = dict(disc_model.init(d_key, images[:1], label, train=False))
        return {
            "g": g_vars,
            "d": d_vars,
            "g_opt": g_opt.init(g_vars["params"]),
            "d_opt": d_opt.init(d_vars["params"]),
        }

    def step(state: dict[str, Any], data: Any, key: jax.Array):
        """One update of D then G. ``data``: the images, or (images, labels) for a
        conditional model: real images keep their own labels, fakes get uniform classes."""
        idx_key, z_key, c_key = jax.random.split(key, 3)
        images = data[0] if conditional else data
        idx = jax.random.randint(idx_key, (recipe.batch_size,), 0, images.shape[0])
        real = images[idx] * 2.0 - 1.0  # the generator's tanh range
        z = jax.random.normal(z_key, (recipe.batch_size, cfg.nz), jnp.float32)
        real_label = data[1][idx] if conditional else None
        fake_label = (
            jax.random.randint(c_key, (recipe.batch_size,), 0, cfg.num_classes)
            if conditional
            else None
        )
        g_vars, d_vars = state["g"], state["d"]

        def generate(g_params):
            return gen_model.apply(
                {"params": g_params, "batch_stats": g_vars["batch_stats"]},
                z,
                fake_label,
                train=True,
                mutable=["batch_stats"],
            )

        g_params = g_vars["params"]
        fake, g_vjp, g_updates = jax.vjp(generate, g_params, has_aux=True)

        def d_loss_fn(d_params):
            stats = d_vars["batch_stats"]
            logit_real, upd = disc_model.apply(
                {"params": d_params, "batch_stats": stats},
                real,
                real_label,
                train=True,
                mutable=["batch_stats"],
            )
            logit_fake, upd = disc_model.apply(
                {"params": d_params, "batch_stats": upd["batch_stats"]},
                jax.lax.stop_gradient(fake),
                fake_label,
                train=True,
                mutable=["batch_stats"],
            )
            loss = _bce(logit_real, recipe.real_label) + _bce(logit_fake, 0.0)
            return loss, (upd["batch_stats"], jax.nn.sigmoid(logit_real).mean())

        (d_loss, (d_stats, d_real)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d_vars["params"]
        )
        with _optax_promotion():
            d_upd, d_opt_state = d_opt.update(d_grads, state["d_opt"], d_vars["params"])
        d_params = optax.apply_updates(d_vars["params"], d_upd)

        def g_loss_fn(fake_images):
            logit, _ = disc_model.apply(
                {"params": d_params, "batch_stats": d_stats},
                fake_images,
                fake_label,
                train=True,
                mutable=["batch_stats"],
            )
            return _bce(logit, 1.0), jax.nn.sigmoid(logit).mean()

        (g_loss, d_fake), fake_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
        (g_grads,) = g_vjp(fake_grad)
        with _optax_promotion():
            g_upd, g_opt_state = g_opt.update(g_grads, state["g_opt"], g_params)
        new_state = {
            "g": {"params": optax.apply_updates(g_params, g_upd), **g_updates},
            "d": {"params": d_params, "batch_stats": d_stats},
            "g_opt": g_opt_state,
            "d_opt": d_opt_state,
        }
        metrics = {"loss_d": d_loss, "loss_g": g_loss, "d_real": d_real, "d_fake": d_fake}
        return new_state, metrics

    def generator_variables(state: dict[str, Any]) -> dict[str, Any]:
        return state["g"]

    return (init, step), generator_variables


# --------------------------------------------------------------------------- VAE


@dataclasses.dataclass(frozen=True)
class _VAEFamily:
    model: nn.Module
    init_training: Callable[[jax.Array], Any]
    decoder_variables: Callable[[Any], Any]


_VAE_FAMILIES: dict[str, Callable[[Any], _VAEFamily]] = {
    "vae": lambda config: _VAEFamily(
        vae.VAE(config),
        lambda key: vae.init_training_variables(config, key),
        vae.decoder_variables,
    ),
    "conv-decoder": lambda config: _VAEFamily(
        conv_decoder.ConvVAE(config),
        lambda key: conv_decoder.init_training_variables(config, key),
        conv_decoder.decoder_variables,
    ),
}


def _vae_family(architecture: str, config: Any) -> _VAEFamily:
    try:
        return _VAE_FAMILIES[architecture](config)
    except KeyError:
        raise ValueError(f"no VAE trainer for architecture {architecture!r}") from None


def _vae_trainer(family: _VAEFamily, recipe: TrainRecipe) -> tuple[Callable, Callable]:
    opt = optax.adam(recipe.lr, b1=recipe.b1)
    if recipe.likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"unknown likelihood {recipe.likelihood!r}")

    def init(key: jax.Array, images: jax.Array) -> dict[str, Any]:
        variables = family.init_training(key)
        return {"vars": variables, "opt": opt.init(variables["params"])}

    def step(state: dict[str, Any], images: jax.Array, key: jax.Array):
        idx_key, noise_key = jax.random.split(key)
        idx = jax.random.randint(idx_key, (recipe.batch_size,), 0, images.shape[0])
        x = images[idx]

        def loss_fn(params):
            logits, mu, logvar = family.model.apply({"params": params}, x, noise_key)
            axes = tuple(range(1, x.ndim))
            if recipe.likelihood == "bernoulli":
                recon = optax.sigmoid_binary_cross_entropy(logits, x).sum(axes)
            else:
                err = jnp.square(jax.nn.sigmoid(logits) - x).sum(axes)
                recon = err / (2.0 * recipe.sigma**2)
            lat_axes = tuple(range(1, mu.ndim))
            kl = 0.5 * (jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar).sum(lat_axes)
            mse = jnp.square(jax.nn.sigmoid(logits) - x).mean()
            return (recon + kl).mean(), {"recon": recon.mean(), "kl": kl.mean(), "mse": mse}

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["vars"]["params"])
        with _optax_promotion():
            upd, opt_state = opt.update(grads, state["opt"], state["vars"]["params"])
        params = optax.apply_updates(state["vars"]["params"], upd)
        return {"vars": {"params": params}, "opt": opt_state}, {"loss": loss, **aux}

    def generator_variables(state: dict[str, Any]) -> dict[str, Any]:
        return family.decoder_variables(state["vars"])

    return (init, step), generator_variables


# --------------------------------------------------------------------------- driver


def _progress_bar():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        refresh_per_second=2,
    )


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def run_training(
    step_fn: Callable,
    state: Any,
    images: jax.Array,
    key: jax.Array,
    steps: int,
    progress: bool = True,
    description: str = "train",
) -> tuple[Any, dict[str, np.ndarray]]:
    """Run ``steps`` jitted steps; returns the final state and per-step metric histories.

    With ``progress``, a rich progress bar on a terminal, or a plain line every
    ``LOG_EVERY`` steps when the output is a file (background runs).
    """
    step = jax.jit(step_fn, donate_argnums=(0,))
    keys = jax.random.split(key, steps)
    history: list[dict[str, jax.Array]] = []
    bar = _progress_bar() if progress else None
    live = bar is not None and bar.console.is_terminal
    task = bar.add_task(description, total=steps, losses="") if live else None
    if live:
        bar.start()
    t0 = time.perf_counter()
    try:
        for i in range(steps):
            state, metrics = step(state, images, keys[i])
            history.append(metrics)
            log_now = (i + 1) % LOG_EVERY == 0 or i + 1 == steps
            if live:
                fields = {}
                if log_now:
                    fields["losses"] = _format({k: float(v) for k, v in metrics.items()})
                bar.update(task, advance=1, **fields)
            elif bar is not None and log_now:
                losses = _format({k: float(v) for k, v in metrics.items()})
                elapsed = time.perf_counter() - t0
                print(f"{description} {i + 1}/{steps} {elapsed:.1f}s {losses}", flush=True)
    finally:
        if live:
            bar.stop()
    stacked = {k: np.asarray(jnp.stack([m[k] for m in history])) for k in history[0]}
    return state, stacked


def sample_grid(
    images: np.ndarray, side: int = GRID_SIDE, pad: int = GRID_PAD, upscale: int = GRID_UPSCALE
) -> np.ndarray:
    """``side*side`` NHWC [0, 1] images tiled into one uint8 (H, W, 3) picture."""
    n, h, w, c = images.shape
    if n < side * side:
        raise ValueError(f"need {side * side} images for the grid, got {n}")
    imgs = np.asarray(images[: side * side], np.float32)
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    cell_h, cell_w = h + pad, w + pad
    grid = np.ones((side * cell_h + pad, side * cell_w + pad, 3), np.float32) * 0.5
    for k in range(side * side):
        r, col = divmod(k, side)
        y, x = pad + r * cell_h, pad + col * cell_w
        grid[y : y + h, x : x + w] = imgs[k]
    grid = np.repeat(np.repeat(grid, upscale, axis=0), upscale, axis=1)
    return np.clip(np.rint(grid * 255.0), 0, 255).astype(np.uint8)


def save_sample_grid(gen: Generator, path: str | Path, seed: int) -> Path:
    """Write a grid of ``gen``'s samples (key ``seed``) as a PNG: 8x8, or for a
    class-conditional model C x C with row ``k`` drawn from class ``k``."""
    from PIL import Image

    classes = gen.num_classes
    if classes:
        z = gen.sample_inputs(jax.random.key(seed), classes * classes)
        labels = jnp.repeat(jnp.arange(classes, dtype=jnp.int32), classes)
        images = np.asarray(gen.apply_fn(gen.params, z, gen.conditions_for_classes(labels)))
        grid = sample_grid(images, side=classes)
    else:
        grid = sample_grid(np.asarray(gen.generate(jax.random.key(seed), GRID_SIDE * GRID_SIDE)))
    Image.fromarray(grid).save(path, optimize=True)
    return Path(path)


def _trainer_for(entry: ZooModel, recipe: TrainRecipe):
    config = recipe.training_config(entry.config)
    if recipe.trainer == "gan":
        return _gan_trainer(config, recipe)
    if recipe.trainer == "vae":
        return _vae_trainer(_vae_family(entry.architecture, config), recipe)
    raise ValueError(f"unknown trainer {recipe.trainer!r}")


def train(
    name: str,
    steps: int | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    subset: int | None = None,
    data: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    entry: ZooModel | None = None,
    recipe: TrainRecipe | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train zoo model ``name`` and save checkpoint, model card and ``samples.png`` to ``out``.

    Returns the model card as written. ``out`` defaults to the model's package weights
    directory; an existing non-empty ``out`` is an error unless ``overwrite``. ``entry`` and
    ``recipe`` train a model that is not in the zoo's table (a benchmark's own, named
    ``name``) with the zoo's trainers; ``out`` is then required, and ``command`` (what
    reproduces it) goes in the card instead of this module's command line.
    """
    if (entry is None) != (recipe is None):
        raise ValueError("entry and recipe are given together (a model outside the zoo's table)")
    if entry is not None and out is None:
        raise ValueError(f"model {name!r} is not in the zoo: give out=")
    entry = entry if entry is not None else get(name)
    recipe = recipe if recipe is not None else RECIPES[name]
    if steps is not None:
        recipe = dataclasses.replace(recipe, steps=int(steps))
    if recipe.steps < 1:
        raise ValueError("steps must be >= 1")
    out = Path(out) if out is not None else weights_dir(name)
    out = out.absolute()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")

    dataset = zoo_data.dataset(data or entry.data)
    images_np = dataset.images
    if subset is not None:
        if subset < 1:
            raise ValueError("subset must be >= 1")
        images_np = images_np[:subset]
    if images_np.shape[1:] != entry.output_shape:
        raise ValueError(
            f"dataset {dataset.name!r} has images {images_np.shape[1:]}, model {name!r} "
            f"emits {entry.output_shape}"
        )
    images: Any = jnp.asarray(images_np, jnp.float32)
    if getattr(entry.config, "num_classes", 0):
        if dataset.labels is None:
            raise ValueError(f"conditional model {name!r} needs a labelled dataset, not {dataset.name!r}")
        labels = np.asarray(dataset.labels[: len(images_np)], np.int32)
        images = (images, jnp.asarray(labels))

    (init, step), generator_variables = _trainer_for(entry, recipe)
    init_key, train_key = jax.random.split(jax.random.key(seed))
    state = init(init_key, images)
    t0 = time.perf_counter()
    state, history = run_training(
        step, state, images, train_key, recipe.steps, progress=progress, description=name
    )
    variables = jax.tree_util.tree_map(np.asarray, generator_variables(state))
    seconds = time.perf_counter() - t0
    window = min(FINAL_WINDOW, recipe.steps)
    final = {k: float(v[-window:].mean()) for k, v in history.items()}
    if not all(np.isfinite(v) for v in final.values()):
        raise FloatingPointError(f"training {name!r} diverged: {final}")

    card = {
        "name": name,
        "description": entry.description
        + (f" [this checkpoint: trained on {dataset.name} instead]" if data else ""),
        "output_shape": list(entry.output_shape),
        "default_reference": entry.default_reference,
        "samples": SAMPLES_FILE,
        "training": {
            "command": command or (
                f"python -m ronan_jax.zoo.train {name} --steps {recipe.steps} --seed {seed}"
                + (f" --data {data}" if data else "")
                + (f" --subset {subset}" if subset else "")),
            "data": dataset.name,
            "data_description": dataset.description,
            "data_licence": dataset.licence,
            "num_images": len(images_np),
            "subset": subset,
            "seed": seed,
            "steps": recipe.steps,
            "recipe": dataclasses.asdict(recipe),
            "final_losses": final,
            "final_losses_window": window,
            "training_seconds": round(seconds, 2),
            "backend": jax.default_backend(),
            "versions": _versions(),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shipped checkpoint is world-readable
    try:
        save_generator(tmp, entry.architecture, entry.config_dict, variables, card)
        save_sample_grid(load_generator(tmp, name=name), tmp / SAMPLES_FILE, seed)
        if out.exists():
            if any(out.iterdir()) and not overwrite:
                raise CheckpointError(f"{out} appeared while training; not overwriting")
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_card(out)  # as on disk (JSON types: lists, not tuples)


def _versions() -> dict[str, str]:
    import flax
    import orbax.checkpoint

    import ronan_jax

    return {
        "ronan_jax": ronan_jax.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax_checkpoint": orbax.checkpoint.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ronan_jax.zoo.train", description="Train a ronan-jax zoo model."
    )
    parser.add_argument("name", choices=sorted(RECIPES), help="zoo model to train")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: recipe)")
    parser.add_argument("--out", type=Path, default=None, help="output checkpoint directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="train on the first K images")
    parser.add_argument("--data", default=None, help="override the training dataset")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    card = train(
        args.name,
        steps=args.steps,
        out=args.out,
        seed=args.seed,
        subset=args.subset,
        data=args.data,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    t = card["training"]
    print(
        f"{args.name}: {t['steps']} steps in {t['training_seconds']} s; {_format(t['final_losses'])}"
    )
    print(f"param_hash {card['param_hash']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
