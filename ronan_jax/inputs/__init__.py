"""Image inputs: sources (files, dirs, globs, tar streams, list files), decoding, batching.

Plain NumPy + Pillow, no JAX: cheap to import and test, usable in any worker process.
"""

from ronan_jax.inputs.batcher import Batch, Batcher, Item
from ronan_jax.inputs.decode import (
    DEFAULT_MAX_PIXELS,
    ERROR_KINDS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    image_to_array,
    sha256,
)
from ronan_jax.inputs.sources import (
    IMAGE_EXTENSIONS,
    SOURCE_ERROR_KINDS,
    DirSource,
    FileSource,
    GlobSource,
    ImageRecord,
    ListFileSource,
    Source,
    TarSource,
    iter_records,
    printable_name,
    real_name,
    source_for,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ERROR_KINDS",
    "IMAGE_EXTENSIONS",
    "SOURCE_ERROR_KINDS",
    "Batch",
    "Batcher",
    "DecodedImage",
    "DirSource",
    "FileSource",
    "GlobSource",
    "ImageDecodeError",
    "ImageRecord",
    "Item",
    "ListFileSource",
    "Source",
    "TarSource",
    "decode_image",
    "image_to_array",
    "iter_records",
    "printable_name",
    "real_name",
    "sha256",
    "source_for",
]
