"""The post-processing an image found in the wild went through (issue 20): named transforms
of uint8 NHWC images, each returning images of the same shape, as a viewer would decode them.

Greyscale images stay greyscale: JPEG and WebP encode them as one channel ("L"); the pilgram
filters work on RGB, so a greyscale image is filtered as RGB and brought back to one channel
with BT.601 luma (the rule an audit applies to a greyscale model, as for Table 8's "1977").

Names (:data:`TRANSFORMS`): ``jpeg95`` ``jpeg90`` ``jpeg75`` ``jpeg50`` (Pillow's encoder at
that quality, its default 4:2:0 chroma subsampling for colour), ``webp90`` ``webp50``,
``resize0.5`` ``resize0.75`` (Lanczos down to that scale, bicubic back up), ``crop5`` (the
central 95 % of each side, bicubic back to full size), ``bright+10`` ``bright-10``
``contrast+10`` ``contrast-10`` (Pillow's ImageEnhance at 1.1 / 0.9), ``gamma0.9``
``gamma1.1``, ``blur0.5`` (Gaussian, sigma 0.5 px), ``unsharp`` (Pillow's UnsharpMask,
radius 2, 150 %, threshold 3), ``1977`` ``clarendon`` ``lofi`` (pilgram's filters) and
``resize0.75+jpeg85`` (a chain: the resize, then JPEG at 85).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ronan_jax.engine.generator import LUMA_WEIGHTS

Transform = Callable[[Image.Image], Image.Image]


def _encoded(fmt: str, quality: int) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format=fmt, quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            return decoded.convert(im.mode)
    return apply


def _resized(scale: float) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        small = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        return small.resize((w, h), Image.Resampling.BICUBIC)
    return apply


def _crop(fraction: float) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = round(w * (1 - fraction)), round(h * (1 - fraction))
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
    return apply


def _enhanced(kind: type, factor: float) -> Transform:
    return lambda im: kind(im).enhance(factor)


def _gamma(g: float) -> Transform:
    table = [round(255 * (i / 255) ** g) for i in range(256)]
    return lambda im: im.point(table * len(im.getbands()))


def _pilgram(name: str) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        import pilgram

        out = getattr(pilgram, name)(im.convert("RGB")).convert("RGB")
        if im.mode == "L":
            rgb = np.asarray(out, np.float64) @ np.asarray(LUMA_WEIGHTS)
            return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "L")
        return out
    return apply


def _chain(*steps: Transform) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        for step in steps:
            im = step(im)
        return im
    return apply


TRANSFORMS: dict[str, Transform] = {
    "jpeg95": _encoded("JPEG", 95),
    "jpeg90": _encoded("JPEG", 90),
    "jpeg75": _encoded("JPEG", 75),
    "jpeg50": _encoded("JPEG", 50),
    "webp90": _encoded("WEBP", 90),
    "webp50": _encoded("WEBP", 50),
    "resize0.5": _resized(0.5),
    "resize0.75": _resized(0.75),
    "crop5": _crop(0.05),
    "bright+10": _enhanced(ImageEnhance.Brightness, 1.1),
    "bright-10": _enhanced(ImageEnhance.Brightness, 0.9),
    "contrast+10": _enhanced(ImageEnhance.Contrast, 1.1),
    "contrast-10": _enhanced(ImageEnhance.Contrast, 0.9),
    "gamma0.9": _gamma(0.9),
    "gamma1.1": _gamma(1.1),
    "blur0.5": lambda im: im.filter(ImageFilter.GaussianBlur(0.5)),
    "unsharp": lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=3)),
    "1977": _pilgram("_1977"),
    "clarendon": _pilgram("clarendon"),
    "lofi": _pilgram("lofi"),
    "resize0.75+jpeg85": _chain(_resized(0.75), _encoded("JPEG", 85)),
}


# The transforms whose last step saves a JPEG, and its quality: their images are that file's
# pixels, so robust mode's codec stage gets the file's tables (:func:`codec_specs`).
JPEG_LAST = {"jpeg95": 95, "jpeg90": 90, "jpeg75": 75, "jpeg50": 50, "resize0.75+jpeg85": 85}


def codec_specs(name: str, images_u8: np.ndarray) -> np.ndarray | None:
    """Each image's JPEG spec after transform ``name`` (``[N, SPEC_SIZE]``), as an audit
    reads it from the saved file; None when the transform does not end in a JPEG save."""
    from ronan_jax.engine.jpeg import jpeg_spec
    from ronan_jax.inputs.decode import jpeg_coding

    if name not in JPEG_LAST:
        return None
    images_u8 = np.asarray(images_u8, np.uint8)
    grey = images_u8.shape[-1] == 1
    specs = []
    for im in images_u8:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if grey else im, "L" if grey else "RGB").save(
            buf, format="JPEG", quality=JPEG_LAST[name])
        with Image.open(io.BytesIO(buf.getvalue())) as saved:
            saved.load()
            coding = jpeg_coding(saved)
        specs.append(jpeg_spec(coding.luma, coding.chroma, coding.sampling))
    return np.stack(specs)


def apply_transform(name: str, images_u8: np.ndarray) -> np.ndarray:
    """Images ``[N, H, W, C]`` uint8 (C 1 or 3) after the transform ``name``, uint8, same shape."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; one of {', '.join(TRANSFORMS)}")
    images_u8 = np.asarray(images_u8, np.uint8)
    grey = images_u8.shape[-1] == 1
    out = []
    for im in images_u8:
        pil = Image.fromarray(im[..., 0] if grey else im, "L" if grey else "RGB")
        done = np.asarray(TRANSFORMS[name](pil), np.uint8)
        out.append(done[..., None] if grey else done)
    return np.stack(out)
