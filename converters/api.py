"""Entry points: recognise a checkpoint's format and convert it to a ronan-jax checkpoint.

::

    from converters.api import convert, detect_format

    detect_format("netG_epoch_24.pth")             # "dcgan"
    card = convert("netG_epoch_24.pth", "models/dcgan-cifar", resize_to=32)
    card["summary"]                                 # what was found: depth, nz, ngf, ...

Formats are dispatched through one table, :data:`CONVERTERS` (format -> module, function).
A format module's function takes ``(src, **options)`` and returns a
:class:`converters.base.Converted`; it reads and verifies, and only :func:`convert` writes
(with ``ronan_jax.models.checkpoint.save_generator``, and ``write_encoder`` for a source's own
encoder), so every card records the same provenance:
architecture config, source file SHA-256, converter version, options and the summary.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converters.base import CONVERTER_VERSION, Converted
from converters.errors import (
    ConversionError,
    FormatNotAvailableError,
    UnknownFormatError,
    preview,
)
from converters.formats import FORMATS
from converters.readers import checkpoint_strings, is_network_pickle, sniff
from ronan_jax.models.checkpoint import save_generator, write_encoder

_ENTRY_POINTS = {
    "dcgan": ("converters.dcgan", "convert_dcgan"),
    "sd-vae": ("converters.sd_vae", "convert_sd_vae"),
    "diffusers-unet": ("converters.diffusers_unet", "convert_unet"),
    "consistency": ("converters.consistency", "convert_consistency"),
    "stylegan-pickle": ("converters.stylegan_pickle", "convert_stylegan_pickle"),
    "stylegan-rosinality": ("converters.stylegan_rosinality", "convert_rosinality"),
}
# format -> (module, function), for every format of FORMATS and in its order (a format without
# an entry point fails here, at import); the function is (src, **options) -> Converted.
CONVERTERS: dict[str, tuple[str, str]] = {fmt: _ENTRY_POINTS[fmt] for fmt in FORMATS}

# diffusers ``config.json`` ``_class_name`` of a model folder -> format.
MODEL_CLASSES = {"AutoencoderKL": "sd-vae", "UNet2DModel": "diffusers-unet"}
# diffusers ``model_index.json`` ``_class_name`` of a pipeline folder -> format. Latent
# diffusion pipelines are audited through their VAE decoder: the generator converted is the
# decoder, its input the latent; the pipeline's UNet and text encoder are not converted.
PIPELINE_CLASSES = {
    "ConsistencyModelPipeline": "consistency",
    "DDPMPipeline": "diffusers-unet",
    "DDIMPipeline": "diffusers-unet",
    "StableDiffusionPipeline": "sd-vae",
    "StableDiffusionXLPipeline": "sd-vae",
    "LDMTextToImagePipeline": "sd-vae",
}


# Keys only a rosinality stylegan2-pytorch generator state dict has (both must be present).
ROSINALITY_KEYS = frozenset({"to_rgb1.conv.weight", "style.1.weight"})


def detect_format(path: str | Path) -> str:
    """The :data:`CONVERTERS` format of a checkpoint file or diffusers folder.

    A single file is recognised by its bytes, never its extension, and nothing in it is
    unpickled: a pickle whose globals name NVlabs' ``torch_utils.persistence`` or ``dnnlib``
    is ``"stylegan-pickle"``; a PyTorch or safetensors checkpoint whose keys include
    rosinality's generator keys (``to_rgb1.conv.weight`` and ``style.1.weight``) is
    ``"stylegan-rosinality"``; any other state-dict file is ``"dcgan"``. A folder is recognised by its
    ``config.json`` (``_class_name`` AutoencoderKL: ``"sd-vae"``, UNet2DModel:
    ``"diffusers-unet"``) or pipeline ``model_index.json`` (:data:`PIPELINE_CLASSES`).

    Anything else (a text or empty file, a pickle that is not a PyTorch checkpoint, a folder
    without those files, an unreadable or malformed JSON file) raises a
    :class:`ConversionError` that names the path.
    """
    path = Path(path)
    if path.is_dir():
        for name, classes, kind in (
            ("config.json", MODEL_CLASSES, "model class"),
            ("model_index.json", PIPELINE_CLASSES, "pipeline"),
        ):
            if (path / name).is_file():
                cls = _json(path / name).get("_class_name")
                if isinstance(cls, str) and cls in classes:
                    return classes[cls]
                raise UnknownFormatError(
                    f"{path}: diffusers {kind} {cls!r} is not supported "
                    f"(supported: {', '.join(sorted(classes))})"
                )
        raise UnknownFormatError(f"{path}: a folder without config.json or model_index.json")
    if path.is_file():
        kind = sniff(path)  # raises CorruptCheckpointError for anything but torch/safetensors bytes
        if kind == "torch-legacy" and is_network_pickle(path):
            return "stylegan-pickle"
        if ROSINALITY_KEYS <= checkpoint_strings(path, kind, ROSINALITY_KEYS):
            return "stylegan-rosinality"
        return "dcgan"
    raise ConversionError(f"{path}: no such file or folder")


def converter_for(fmt: str) -> Callable[..., Converted]:
    """The conversion function of ``fmt`` (imported on first use)."""
    if fmt not in CONVERTERS:
        raise UnknownFormatError(f"unknown format {fmt!r}; known: {', '.join(sorted(CONVERTERS))}")
    module_name, func_name = CONVERTERS[fmt]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise FormatNotAvailableError(
            f"format {fmt!r} is recognised but its converter ({module_name}) is not available yet"
        ) from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise FormatNotAvailableError(
            f"format {fmt!r}: {module_name} has no {func_name}() yet"
        )
    return func


def convert(
    src: str | Path, out_dir: str | Path, fmt: str | None = None, *, name: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert ``src`` and write a ronan-jax checkpoint to ``out_dir`` (new or empty).

    ``options`` go to the format's converter (e.g. DCGAN: ``key``, ``nz``, ``num_classes``,
    ``image_size``, ``resize_to``, ``resize_method``; SD VAE: ``image_size``,
    ``include_encoder``). Returns the model card as written: ``architecture``, ``config``,
    ``param_hash``, ``format``, ``source`` (path, SHA-256 of each file read), ``converter``
    (version, options), ``summary`` (what the converter found) and, when the source has its
    own encoder (a diffusers AutoencoderKL), ``encoder`` (stored as the checkpoint's
    encoder, so warm starts work at once).
    """
    src, out_dir = Path(src), Path(out_dir)
    fmt = fmt or detect_format(src)
    func = converter_for(fmt)
    _check_options(func, fmt, options)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: output folder exists and is not empty")
    result = func(src, **options)
    files = dict(result.sources)
    card = {
        "name": name or out_dir.name,
        "format": fmt,
        "source": {
            "path": str(src.absolute()),
            "sha256": next(iter(files.values()), None),
            "files": files,
        },
        "converter": {
            "package": "converters",
            "version": CONVERTER_VERSION,
            "function": f"{CONVERTERS[fmt][0]}.{CONVERTERS[fmt][1]}",
            "options": _jsonable(options),
        },
        "summary": _jsonable(result.summary),
    }
    card = save_generator(out_dir, result.architecture, result.config, result.variables, card)
    if result.encoder is not None:
        enc = result.encoder
        card["encoder"] = write_encoder(
            out_dir, enc.architecture, enc.config, enc.variables, _jsonable(enc.provenance)
        )
    return card


def _check_options(func: Callable[..., Any], fmt: str, options: dict[str, Any]) -> None:
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConversionError(
            f"unknown option(s) {preview(unknown)} for format {fmt!r}; known: {', '.join(known) or 'none'}"
        )


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise ConversionError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def _jsonable(value: Any) -> Any:
    """Options and summaries as plain JSON values (tuples -> lists, paths -> strings)."""
    return json.loads(json.dumps(value, default=str))
