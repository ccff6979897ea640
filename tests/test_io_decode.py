"""Decoding rules: every supported mode, EXIF, resizing, and one bad file per error kind."""

import hashlib
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from ronan_jax.inputs.decode import (
    ERROR_KINDS,
    ImageDecodeError,
    decode_image,
    image_to_array,
    sha256,
)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_rgb(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def decode_kind(data: bytes, **kw) -> ImageDecodeError:
    args = {"target_hw": (4, 4), "channels": 3, "resize": False, **kw}
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **args)
    return info.value


# -- modes -----------------------------------------------------------------------------------


def test_rgb_png_gives_float32_hwc_in_unit_range_with_height_first():
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[1, 2] = (255, 128, 0)
    out = decode_image(encode(Image.fromarray(arr)), (2, 3), 3, False)
    assert out.array.shape == (2, 3, 3)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.array[1, 2], [1.0, 128 / 255, 0.0], rtol=1e-6)
    assert out.original_size == (3, 2) and (out.width, out.height) == (3, 2)
    assert out.original_mode == "RGB" and not out.resized


def test_rgba_pixel_composites_on_white():
    im = Image.new("RGBA", (1, 1), (200, 100, 0, 128))
    out = decode_image(encode(im), (1, 1), 3, False)
    a = 128 / 255
    expected = [200 / 255 * a + 1 - a, 100 / 255 * a + 1 - a, 1 - a]
    np.testing.assert_allclose(out.array[0, 0], expected, rtol=1e-6)
    assert out.original_mode == "RGBA"


def test_la_transparent_pixel_is_white_and_opaque_pixel_keeps_its_value():
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 0))  # black, fully transparent
    im.putpixel((1, 0), (51, 255))  # opaque
    out = decode_image(encode(im), (1, 2), 1, False)
    np.testing.assert_allclose(out.array[0, :, 0], [1.0, 0.2], rtol=1e-6)


def test_grey_to_colour_replicates_the_channel():
    out = decode_image(encode(Image.new("L", (2, 2), 51)), (2, 2), 3, False)
    np.testing.assert_allclose(out.array, np.full((2, 2, 3), 0.2), rtol=1e-6)


def test_colour_to_grey_uses_bt601_luma():
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    out = decode_image(encode(Image.fromarray(arr)), (1, 4), 1, False)
    assert out.array.shape == (1, 4, 1)
    np.testing.assert_allclose(out.array[0, :, 0], [0.299, 0.587, 0.114, 1.0], rtol=1e-5)


def test_palette_image_decodes_and_transparent_entry_becomes_white():
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    plain = decode_image(encode(im), (1, 2), 3, False)
    np.testing.assert_allclose(plain.array[0], [[1, 0, 0], [0, 0, 1]])
    transparent = decode_image(encode(im, transparency=1), (1, 2), 3, False)
    np.testing.assert_allclose(transparent.array[0], [[1, 0, 0], [1, 1, 1]])
    assert transparent.original_mode == "P"


def test_bilevel_image_maps_to_zero_and_one():
    im = Image.new("1", (2, 1), 0)
    im.putpixel((1, 0), 1)
    out = decode_image(encode(im), (1, 2), 1, False)
    np.testing.assert_array_equal(out.array[0, :, 0], [0.0, 1.0])
    assert out.original_mode == "1"


def test_16bit_png_scales_by_65535():
    arr = np.array([[0, 32768, 65535]], np.uint16)
    out = decode_image(encode(Image.fromarray(arr)), (1, 3), 1, False)
    assert out.original_mode == "I;16"
    np.testing.assert_allclose(out.array[0, :, 0], [0.0, 32768 / 65535, 1.0], rtol=1e-6)


def test_16bit_big_endian_tiff_scales_by_65535():
    im = Image.new("I;16B", (2, 1))
    im.putpixel((0, 0), 65535)
    im.putpixel((1, 0), 1000)
    out = decode_image(encode(im, "TIFF"), (1, 2), 1, False)
    assert out.original_mode == "I;16B"
    np.testing.assert_allclose(out.array[0, :, 0], [1.0, 1000 / 65535], rtol=1e-6)


def test_32bit_int_image_reads_16bit_range_as_16bit_and_larger_values_by_int32_max():
    small = Image.fromarray(np.array([[0, 65535]], np.int32))
    out = decode_image(encode(small, "TIFF"), (1, 2), 1, False)
    assert out.original_mode == "I"
    np.testing.assert_allclose(out.array[0, :, 0], [0.0, 1.0], rtol=1e-6)
    wide = Image.fromarray(np.array([[-5, 2**31 - 1, 2**30]], np.int32))
    out = decode_image(encode(wide, "TIFF"), (1, 3), 1, False)
    np.testing.assert_allclose(out.array[0, :, 0], [0.0, 1.0, 0.5], rtol=1e-6)


def test_float_image_is_clipped_to_unit_range_and_nan_is_corrupt():
    im = Image.fromarray(np.array([[0.25, 1.5, -1.0]], np.float32))
    out = decode_image(encode(im, "TIFF"), (1, 3), 1, False)
    np.testing.assert_allclose(out.array[0, :, 0], [0.25, 1.0, 0.0])
    bad = Image.fromarray(np.array([[np.nan, 0.5]], np.float32))
    assert decode_kind(encode(bad, "TIFF"), target_hw=(1, 2)).kind == "corrupt"


def test_cmyk_converts_to_rgb():
    im = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    out = decode_image(encode(im, "TIFF"), (1, 1), 3, False)
    assert out.original_mode == "CMYK"
    np.testing.assert_allclose(out.array[0, 0], [1.0, 0.0, 0.0])


def test_ycbcr_converts_to_rgb_like_pillow():
    im = Image.new("YCbCr", (1, 1), (120, 60, 200))
    out = decode_image(encode(im, "TIFF"), (1, 1), 3, False)
    assert out.original_mode == "YCbCr"
    expected = np.asarray(im.convert("RGB"), np.float32)[0, 0] / 255
    np.testing.assert_allclose(out.array[0, 0], expected, rtol=1e-6)


def test_exif_orientation_rotates_before_size_check():
    arr = np.zeros((1, 2, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)
    arr[0, 1] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 2 wide x 1 high; shown rotated 90 degrees clockwise
    data = encode(Image.fromarray(arr), exif=exif)
    out = decode_image(data, (2, 1), 3, False)
    assert out.original_size == (1, 2)
    np.testing.assert_allclose(out.array[:, 0], [[1, 0, 0], [0, 0, 1]])


def test_resize_uses_float_lanczos_and_records_it():
    im = Image.fromarray(np.full((8, 6), 1000, np.uint16))  # 16-bit, not a multiple of 1/255
    out = decode_image(encode(im), (4, 3), 3, True)
    assert out.resized and out.original_size == (6, 8)
    assert out.array.shape == (4, 3, 3)
    # one quantisation only: an 8-bit round trip would give 4/255 = 0.0157, not 0.01526
    np.testing.assert_allclose(out.array, 1000 / 65535, rtol=1e-5)


def test_resize_flag_leaves_right_sized_images_untouched():
    out = decode_image(encode(Image.new("L", (4, 4), 51)), (4, 4), 1, True)
    assert not out.resized
    np.testing.assert_allclose(out.array, 0.2, rtol=1e-6)


def test_image_to_array_applies_the_same_rules_to_in_memory_images():
    out = image_to_array(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), (2, 2), 1, False)
    np.testing.assert_allclose(out.array, 1.0)


def test_sha256_is_hex_digest_of_raw_bytes():
    assert sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_bad_channel_count_is_a_plain_value_error():
    with pytest.raises(ValueError, match="channels"):
        decode_image(encode(Image.new("L", (1, 1))), (1, 1), 2, False)


# -- error kinds -----------------------------------------------------------------------------


def test_zero_byte_file_is_empty():
    assert decode_kind(b"").kind == "empty"


def test_text_file_named_png_is_not_an_image():
    err = decode_kind(b"this is a text file, not a picture\n")
    assert err.kind == "not-an-image"
    assert isinstance(err, ValueError)


def test_truncated_png_and_jpeg_are_truncated():
    png = encode(noise_rgb())
    jpeg = encode(noise_rgb(), "JPEG")
    assert decode_kind(png[: len(png) // 2], target_hw=(64, 64)).kind == "truncated"
    assert decode_kind(jpeg[: len(jpeg) // 2], target_hw=(64, 64)).kind == "truncated"


def test_damaged_png_data_is_corrupt_and_damaged_header_too():
    png = bytearray(encode(noise_rgb()))
    png[100:110] = b"\x00" * 10  # inside the compressed pixel data
    assert decode_kind(bytes(png), target_hw=(64, 64)).kind == "corrupt"
    assert decode_kind(bytes(png[:30])).kind == "corrupt"  # PNG signature, broken header


def test_header_claiming_huge_dimensions_is_too_large_without_loading():
    for side in (20_000, 10_000):  # over twice Pillow's limit (error) / over it (warning)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a leaked DecompressionBombWarning would fail here
            err = decode_kind(png_claiming(side, side), max_pixels=10**12)
        assert err.kind == "too-large"


def test_max_pixels_parameter_refuses_images_above_it():
    err = decode_kind(encode(Image.new("L", (100, 100))), target_hw=(100, 100), max_pixels=5000)
    assert err.kind == "too-large"
    assert err.original_size == (100, 100)
    assert "5000" in err.message


def test_wrong_size_without_resize_is_size_mismatch_with_helpful_message():
    err = decode_kind(encode(Image.new("RGB", (8, 6))), target_hw=(4, 4))
    assert err.kind == "size-mismatch"
    assert "8x6" in err.message and "4x4" in err.message and "--resize" in err.message
    assert err.original_size == (8, 6) and err.original_mode == "RGB"


def test_unsupported_mode_is_mode_error():
    err = decode_kind(encode(Image.new("LAB", (4, 4)), "TIFF"))
    assert err.kind == "mode" and "LAB" in err.message


def test_error_kinds_are_a_closed_set():
    with pytest.raises(ValueError):
        ImageDecodeError("weird", "no such kind")
    assert set(ERROR_KINDS) == {
        "empty",
        "not-an-image",
        "corrupt",
        "truncated",
        "too-large",
        "size-mismatch",
        "mode",
    }
