"""Decode image bytes into the float array a generator's output is compared with.

One set of rules for the whole project, so that an image means the same thing to the audit,
the profile builder and the benchmarks:

* Output: float32, HxWxC, values in [0, 1], C = the model's channel count (1 or 3).
* Transparency (RGBA, LA, palette images with a transparent entry) is composited on a WHITE
  background. Digits and photos saved with an alpha channel almost always mean "ink on
  paper" / "subject on a page", and every viewer shows them on white; compositing on black
  would turn a transparent MNIST-style background into the digit's ink colour.
* Colour to greyscale is ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B`` (what Pillow's
  ``convert("L")`` does, here computed in float so nothing is rounded to 8 bits).
  Greyscale to colour replicates the channel.
* 8-bit modes are divided by 255; 16-bit modes (``I;16``, ``I;16B``, ...) by 65535.
  Mode ``I`` (32-bit signed) is read as 16-bit data (divided by 65535) when every value lies
  in 0..65535 -- Pillow stores 16-bit PGM/PPM that way -- and otherwise divided by the 32-bit
  maximum 2**31 - 1 with negative values clipped to 0. Mode ``F`` is taken to be in [0, 1]
  already and clipped; NaN or infinite values make the image ``corrupt``.
* CMYK and YCbCr go through Pillow's own conversion to RGB; ``1`` (bilevel) maps to 0 and 1.
* EXIF orientation is applied first, so sizes and pixels are as a viewer shows them.
* Resizing happens only when asked (``resize=True``): Pillow's antialiased LANCZOS filter on
  float32 planes (after compositing, before replicating grey to colour), so a 16-bit or 8-bit
  image is quantised once, not twice. The result is clipped to [0, 1] (LANCZOS overshoots).
* Decompression bombs are refused from the header, before any pixel is decoded.

Errors are `ImageDecodeError` with a `kind` the results store records; no Pillow exception
leaks out of `decode_image`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_ORIENTATION = 0x0112  # the EXIF orientation tag

DEFAULT_MAX_PIXELS = 64_000_000
"""Images whose header claims more pixels than this are refused as ``too-large``."""

ERROR_KINDS: tuple[str, ...] = (
    "empty",
    "not-an-image",
    "corrupt",
    "truncated",
    "too-large",
    "size-mismatch",
    "mode",
)

SUPPORTED_MODES: frozenset[str] = frozenset(
    {
        "1",
        "L",
        "LA",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I",
        "I;16",
        "I;16L",
        "I;16B",
        "I;16N",
        "F",
    }
)

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 weights: the project's one colour-to-grey rule."""

# Signatures of formats we know, to tell "damaged PNG" from "not an image at all".
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

# warnings.catch_warnings mutates process-wide state; serialise our (header-only, cheap) use of
# it so concurrent decoder threads cannot restore each other's filters out of order.
_OPEN_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """An image that cannot be used, with a machine-readable `kind` (one of `ERROR_KINDS`).

    `original_size` ((width, height)) and `original_mode` are filled in when the header was
    read, so an error row can still say what the file was.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        original_size: tuple[int, int] | None = None,
        original_mode: str | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown decode error kind {kind!r}; expected one of {ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.original_size = original_size
        self.original_mode = original_mode


@dataclass(frozen=True)
class JpegCoding:
    """How a JPEG file's pixels were coded: its quantisation tables (64 entries each, in
    row-major order) and chroma subsampling (0 for 4:4:4, 1 for 4:2:2, 2 for 4:2:0; 0 for
    greyscale). Robust mode's JPEG stage re-codes a model's output with exactly these."""

    luma: tuple[int, ...]
    chroma: tuple[int, ...] | None
    sampling: int


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what it was before decoding.

    `original_size` is ``(width, height)`` (Pillow's order) after EXIF orientation;
    `resized` says whether the pixels were resampled to the model size. `jpeg` is the
    file's JPEG coding when the array is that coding's output pixel for pixel (a greyscale
    JPEG for a one-channel model, a YCbCr one for a colour model, neither resized nor
    reoriented); None otherwise.
    """

    array: np.ndarray
    original_size: tuple[int, int]
    original_mode: str
    resized: bool
    jpeg: JpegCoding | None = None

    @property
    def width(self) -> int:
        """Original width in pixels (after EXIF orientation)."""
        return self.original_size[0]

    @property
    def height(self) -> int:
        """Original height in pixels (after EXIF orientation)."""
        return self.original_size[1]


def sha256(data: bytes) -> str:
    """Hex SHA-256 of the raw file bytes: the image's identity for keys and dedup."""
    return hashlib.sha256(data).hexdigest()


def _describe_failure(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_truncation(e: BaseException) -> bool:
    return isinstance(e, EOFError) or "truncated" in str(e).lower()


def _sniff(data: bytes) -> str | None:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only; refuse non-images and bombs before any pixel is decoded."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow warns (and at twice its limit raises) from inside Image.open; make the
            # warning an exception too, so Pillow's own limit is never exceeded either.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageDecodeError("too-large", f"decompression-bomb guard: {e}") from None
    except UnidentifiedImageError:
        fmt = _sniff(data)
        if fmt is not None:
            raise ImageDecodeError(
                "corrupt", f"starts like a {fmt} file but its header cannot be read"
            ) from None
        raise ImageDecodeError("not-an-image", "not an image format Pillow can read") from None
    except Exception as e:  # any parse failure inside a plugin is a damaged file
        kind = "truncated" if _is_truncation(e) else "corrupt"
        raise ImageDecodeError(kind, _describe_failure(e)) from None
    width, height = im.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too-large",
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (decompression-bomb guard)",
            original_size=(width, height),
            original_mode=im.mode,
        )
    return im


def decode_image(
    data: bytes,
    target_hw: tuple[int, int],
    channels: int,
    resize: bool,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode file bytes into a float32 ``target_hw + (channels,)`` array in [0, 1].

    Raises `ImageDecodeError` for every way the bytes can be unusable (see `ERROR_KINDS`);
    raises plain ValueError only for invalid arguments. The effective pixel limit is the
    smaller of `max_pixels` and Pillow's ``Image.MAX_IMAGE_PIXELS``.
    """
    check_target(target_hw, channels)
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    im = _open(data, max_pixels)
    header = {"original_size": im.size, "original_mode": im.mode}
    if im.mode not in SUPPORTED_MODES:
        raise ImageDecodeError("mode", f"unsupported image mode {im.mode!r}", **header)
    try:
        im.load()
    except Exception as e:
        kind = "truncated" if _is_truncation(e) else "corrupt"
        raise ImageDecodeError(kind, _describe_failure(e), **header) from None
    coding = jpeg_coding(im)
    try:
        if im.getexif().get(_ORIENTATION, 1) != 1:
            coding = None  # reoriented: the 8x8 block grid is no longer the file's
        oriented = ImageOps.exif_transpose(im)
    except Exception:
        oriented = im  # unreadable EXIF: show the pixels as stored, as most viewers do
    try:
        out = image_to_array(oriented, target_hw, channels, resize)
        matches = coding is not None and not out.resized and (
            (channels == 1) == (coding.chroma is None))
        return dataclasses.replace(out, jpeg=coding if matches else None)
    except ImageDecodeError:
        raise
    except Exception as e:  # e.g. a plugin failing late inside convert()
        raise ImageDecodeError("corrupt", _describe_failure(e), **header) from None


def jpeg_coding(im: Image.Image) -> JpegCoding | None:
    """The coding of a loaded JPEG in greyscale or YCbCr colour (None for any other file,
    or for a JPEG whose tables Pillow cannot give or that stores RGB or CMYK directly)."""
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return None
    tables = getattr(im, "quantization", None) or {}
    try:
        layers = [(int(h), int(v)) for _, h, v, _ in im.layer]
        table_of = [int(t) for *_, t in im.layer]
        luma = tuple(int(v) for v in tables[table_of[0]])
        if im.mode == "L":
            return JpegCoding(luma, None, 0) if len(luma) == 64 and min(luma) >= 1 else None
        if im.info.get("adobe_transform", 1) == 0 or len(set(table_of[1:])) != 1:
            return None  # RGB stored without the YCbCr transform, or unlike chroma tables
        chroma = tuple(int(v) for v in tables[table_of[1]])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    sampling = {((1, 1), (1, 1), (1, 1)): 0, ((2, 1), (1, 1), (1, 1)): 1,
                ((2, 2), (1, 1), (1, 1)): 2}.get(tuple(layers))
    if sampling is None or len(luma) != 64 or len(chroma) != 64 or min(luma + chroma) < 1:
        return None
    return JpegCoding(luma, chroma, sampling)


def check_target(target_hw: tuple[int, int], channels: int) -> None:
    """Raise ValueError unless `target_hw` is (height, width) > 0 and `channels` is 1 or 3."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if len(target_hw) != 2 or min(target_hw) < 1:
        raise ValueError(f"target_hw must be (height, width) of positive ints, got {target_hw}")


def image_to_array(
    im: Image.Image, target_hw: tuple[int, int], channels: int, resize: bool
) -> DecodedImage:
    """Apply the project's mode, channel and size rules to an already opened Pillow image.

    `decode_image` calls this after loading and EXIF orientation; it is public so in-memory
    images (tests, sample grids) follow exactly the same rules.
    """
    check_target(target_hw, channels)
    mode = im.mode
    width, height = im.size
    header = {"original_size": (width, height), "original_mode": mode}
    if mode not in SUPPORTED_MODES:
        raise ImageDecodeError("mode", f"unsupported image mode {mode!r}", **header)
    th, tw = target_hw
    needs_resize = (height, width) != (th, tw)
    if needs_resize and not resize:
        raise ImageDecodeError(
            "size-mismatch",
            f"image is {width}x{height} (width x height) but the model's images are "
            f"{tw}x{th}; use --resize to resample it to the model size",
            **header,
        )
    arr = _to_float(im)
    if channels == 1 and arr.shape[-1] == 3:
        arr = (arr @ LUMA_WEIGHTS)[..., None]
    if needs_resize:
        arr = _resize(arr, th, tw)
    if channels == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)
    return DecodedImage(arr, (width, height), mode, needs_resize)


def _scaled(im: Image.Image, scale: float) -> np.ndarray:
    return np.asarray(im).astype(np.float32) / np.float32(scale)


def _on_white(arr: np.ndarray) -> np.ndarray:
    """Composite colour-plus-alpha (last channel) on a white background."""
    colour, alpha = arr[..., :-1], arr[..., -1:]
    return colour * alpha + (np.float32(1.0) - alpha)


def _to_float(im: Image.Image) -> np.ndarray:
    """HxWx1 (grey) or HxWx3 (colour) float32 in [0, 1], alpha already composited."""
    mode = im.mode
    if mode == "1":
        arr = np.asarray(im).astype(np.float32)
    elif mode == "L":
        arr = _scaled(im, 255)
    elif mode == "LA":
        return _on_white(_scaled(im, 255))
    elif mode in ("P", "PA"):
        if mode == "PA" or im.has_transparency_data:
            return _on_white(_scaled(im.convert("RGBA"), 255))
        return _scaled(im.convert("RGB"), 255)
    elif mode == "RGB":
        return _scaled(im, 255)
    elif mode == "RGBA":
        return _on_white(_scaled(im, 255))
    elif mode in ("RGBX", "CMYK", "YCbCr"):
        return _scaled(im.convert("RGB"), 255)
    elif mode.startswith("I;16"):
        arr = _scaled(im, 65535)
    elif mode == "I":
        raw = np.asarray(im).astype(np.int64)
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            arr = raw.astype(np.float32) / np.float32(65535)
        else:
            arr = (np.clip(raw, 0, None) / (2**31 - 1)).astype(np.float32)
    elif mode == "F":
        arr = np.asarray(im).astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ImageDecodeError(
                "corrupt",
                "float image contains NaN or infinite values",
                original_size=im.size,
                original_mode=mode,
            )
    else:  # pragma: no cover - guarded by SUPPORTED_MODES
        raise ImageDecodeError("mode", f"unsupported image mode {mode!r}")
    return arr[..., None]


def _resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased LANCZOS resample of each float32 plane (no 8-bit round trip)."""
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32)).resize(
                (width, height), Image.Resampling.LANCZOS
            )
        )
        for c in range(arr.shape[-1])
    ]
    return np.stack(planes, axis=-1).astype(np.float32)
