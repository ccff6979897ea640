"""``ronan encoder``: train the encoder that warm-starts a model's inversions."""

from __future__ import annotations

from pathlib import Path

import click

from ronan_jax.cli.app import cli, handle_errors, stderr, stdout


@cli.group()
def encoder() -> None:
    """A model's encoder (image -> input): the warm start of its inversions.

    With --warm-start (or a preset that has it), every image gets one more inversion run,
    started at its encoding, besides the random restarts. The encoder is stored inside the
    model's checkpoint directory and hashed into its identity.
    """


@encoder.command("train")
@click.option("--model", "model_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint directory of the model (model_card.json + params/); the encoder is written into it.")
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(min=1), help="Training steps.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1), help="Model samples per step.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--recon-weight", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the reconstruction through the frozen model (the latent regression has weight 1).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the encoder's initialisation and of every batch.")
@click.option("--data", "data_name", default=None,
              help="Also learn to reconstruct the real images of this zoo dataset (e.g. photo-train), "
                   "for a reference model that inverts images it never made.")
@click.option("--force", is_flag=True, help="Train a new encoder even if the model already ships one.")
@handle_errors
def encoder_train(model_dir: Path, steps: int, batch: int, lr: float, recon_weight: float,
                  seed: int, data_name: str | None, force: bool) -> None:
    """Train MODEL's encoder on its own samples (resumable: rerun the same command after a stop).

    Loss: latent regression (the sampled input) plus reconstruction through the frozen
    model. Minutes on 2 CPU cores for the zoo's 32x32 models.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ronan_jax.models.encoder_training import EncoderTraining, train_encoder

    real = None
    if data_name is not None:
        from ronan_jax.zoo import data as zoo_data

        try:
            real = zoo_data.dataset(data_name).images
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--data") from None
    settings = EncoderTraining(steps=steps, batch=batch, lr=lr, recon_weight=recon_weight, seed=seed)
    console = stderr()
    bar = Progress(TextColumn("[bold]encoder"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=console)
    task = bar.add_task("encoder", total=steps, losses="")

    def progress(done: int, total: int, losses: dict[str, float]) -> None:
        text = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
        bar.update(task, completed=done, losses=text)
        if not console.is_terminal:
            console.print(f"step {done}/{total} {text}")

    with bar:
        result = train_encoder(model_dir, settings, real_images=real, real_name=data_name,
                               force=force, progress=progress)
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items())
    stdout().print(f"Encoder {result.entry['param_hash'][:12]} written into {model_dir} "
                   f"({steps} steps in {result.seconds:.0f} s{resumed}; final {losses}).")
