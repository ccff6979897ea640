"""``ronan convert``: a PyTorch or diffusers checkpoint into a ronan-jax model directory."""

from __future__ import annotations

from pathlib import Path

import click

from converters.formats import FORMATS
from ronan_jax.cli.app import cli, handle_errors


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write (new or empty).")
@click.option("--format", "fmt", default=None, type=click.Choice(FORMATS), help="Source format (default: detected from SRC).")
@click.option("--name", default=None, help="Model name recorded in the card (default: the output folder's name).")
@click.option("--key", default=None, help="DCGAN: entry of a wrapped checkpoint dict holding the generator's state dict (e.g. netG_state_dict).")
@click.option("--nz", type=click.IntRange(min=1), default=None, help="DCGAN: noise size (lets a conditional model's class count be inferred).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="DCGAN: classes of a conditional model (one-hot concatenated to the noise).")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Expected output size (checked against the weights; SD-VAE/UNet: native size).")
@click.option("--resize-to", type=click.IntRange(min=0), default=0, help="DCGAN: resize the output to this size (antialiased), as the authors did for CIFAR-10.")
@click.option("--steps", "num_inference_steps", type=click.IntRange(min=1), default=None, help="UNet/consistency: sampler steps of the generator (each Adam step runs them all).")
@click.option("--class-label", type=int, default=None, help="Class-conditional UNet/consistency: fix the class to this label. Default: none fixed; profiles and audits then give each image its class (--class, --classes-from, --class-rule).")
@click.option("--network", default=None, help="StyleGAN: which generator of the file (pickle: G_ema or G; rosinality: g_ema or g; default the EMA one).")
@click.option("--input-space", type=click.Choice(["z", "w", "w+"]), default=None, help="StyleGAN: the input the audit inverts (default z; w+ fits more images, own or not: profile and audit in the same space).")
@click.option("--truncation-psi", type=float, default=None, help="StyleGAN: truncation psi (default 1: none).")
@click.option("--truncation-cutoff", type=click.IntRange(min=0), default=None, help="StyleGAN: truncate only the first N layers' w.")
@click.option("--noise-mode", type=click.Choice(["none", "const"]), default=None, help="StyleGAN: no noise (default) or the stored constant noise buffers.")
@handle_errors
def convert(src: str, out: str, fmt: str | None, name: str | None, key: str | None, nz: int | None,
            num_classes: int | None, image_size: int | None, resize_to: int,
            num_inference_steps: int | None, class_label: int | None, network: str | None,
            input_space: str | None, truncation_psi: float | None, truncation_cutoff: int | None,
            noise_mode: str | None) -> None:
    """Convert a PyTorch or diffusers checkpoint SRC into a ronan-jax model directory.

    Formats: a pytorch/examples DCGAN generator state dict (.pth/.pt/.bin/.safetensors, bare
    or wrapped in a training checkpoint, legacy or CUDA-saved), a diffusers AutoencoderKL
    folder (Stable Diffusion VAE: the decoder becomes the generator, its latent the input, and
    its encoder, when the weights hold one, the model's encoder for warm starts), a
    diffusers UNet2DModel folder (+ scheduler: deterministic DDIM), a consistency model, an
    NVlabs StyleGAN2 network pickle (network-*.pkl) or a rosinality stylegan2-pytorch .pt.
    Nothing in the checkpoint is executed. The result loads with --model OUT.
    """
    from converters import ConversionError
    from converters.api import convert as run_convert
    from converters.api import detect_format

    given = {"key": key, "nz": nz, "num_classes": num_classes, "image_size": image_size,
             "num_inference_steps": num_inference_steps, "class_label": class_label,
             "network": network, "input_space": input_space, "truncation_psi": truncation_psi,
             "truncation_cutoff": truncation_cutoff, "noise_mode": noise_mode}
    if resize_to:
        given["resize_to"] = resize_to
    options = {k: v for k, v in given.items() if v is not None}
    try:
        fmt = fmt or detect_format(src)
        card = run_convert(src, out, fmt, name=name, **options)
    except (ConversionError, TypeError, ValueError) as exc:
        raise click.UsageError(f"cannot convert {src}: {exc}") from exc
    shape = card.get("summary", {}).get("output_shape") or card.get("summary", {}).get("image_size")
    click.echo(f"Found {fmt} ({card['architecture']}); wrote {out} "
               f"(param hash {card['param_hash'][:12]}{', output ' + str(shape) if shape else ''}).")
    if card.get("encoder"):
        click.echo(f"Kept its encoder ({card['encoder']['architecture']}, hash "
                   f"{card['encoder']['param_hash'][:12]}): warm starts work at once (--preset fast).")
    click.echo(f"Next: ronan profile --model {out} -o {Path(out).name}.profile.json")
