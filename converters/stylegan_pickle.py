"""NVlabs StyleGAN2 network pickles (stylegan2-ada-pytorch / stylegan3 ``network-*.pkl``),
read without running anything in them.

Such a pickle is ``pickle.dump({"G": ..., "D": ..., "G_ema": ..., "augment_pipe": ...,
"training_set_kwargs": ...})`` of modules of NVlabs' persistent classes: each module is
pickled as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta``
holds the source code of the module's Python file (``module_src``), the class name and the
module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...).
Loading it the normal way executes ``module_src``. Here a restricted unpickler
(:class:`NetworkUnpickler`) resolves only the globals of :data:`ALLOWED_GLOBALS`, each to a
local stand-in: the persistence hook becomes a plain :class:`PersistentRecord` (class name,
state, the source's SHA-256; the source itself is never imported, compiled or run),
``dnnlib.util.EasyDict`` a dict, and tensors NumPy arrays. Any other global is refused with
an :class:`~converters.errors.UnsafeCheckpointError` naming it.

Tensors in a plain pickle are ``torch._utils._rebuild_tensor_v2(storage, ...)`` whose storage
is ``torch.storage._load_from_bytes(b)``: ``b`` is a legacy-format ``torch.save`` of the
storage (magic number, protocol version, system info, the storage as a persistent id
``("storage", torch.FloatStorage, key, location, numel, view)``, the storage keys, then per
key an int64 element count and the raw little-endian bytes). :func:`load_storage_bytes`
parses that with a second restricted unpickler whose ``persistent_load`` answers the ids.

The architecture is read from the generator's recorded init kwargs (``z_dim``, ``w_dim``,
``c_dim``, ``img_resolution``, ``img_channels``, ``mapping_kwargs``, ``synthesis_kwargs``)
and checked against the tensors. The "skip" StyleGAN2 generator is supported; "orig" and
"resnet" synthesis architectures, StyleGAN3 generators and TensorFlow-era pickles are
refused with a message saying what was found.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from converters.base import Converted, sha256_file
from converters.errors import (
    ArchitectureError,
    ConversionError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    preview,
)
from converters.readers import is_network_pickle, require_finite
from converters.stylegan2 import nvlabs_variables
from ronan_jax.models import stylegan2

__all__ = [
    "ALLOWED_GLOBALS",
    "NetworkUnpickler",
    "PersistentRecord",
    "convert_stylegan_pickle",
    "is_network_pickle",
    "load_storage_bytes",
    "read_network_pickle",
    "record_tensors",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
NETWORKS = ("G_ema", "G")

# torch storage class -> NumPy dtype of its elements (bfloat16 is read as uint16 bits).
STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass
class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` stands for, as data: the class name, the
    object's pickled ``__dict__`` and the SHA-256 of its (never executed) module source."""

    class_name: str
    state: dict[str, Any]
    module_src_sha256: str | None
    version: Any = None


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (its attribute access is not needed)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: Any


class _Storage:
    """A storage's elements once read (``data``), 1-D."""

    def __init__(self, dtype: Any, numel: int) -> None:
        self.dtype, self.numel = np.dtype(dtype), int(numel)
        self.data: np.ndarray | None = None


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, Mapping) or meta.get("type") != "class":
        raise CorruptCheckpointError(f"persistent object of unsupported kind {type(meta).__name__}")
    state = meta.get("state")
    src = meta.get("module_src")
    return PersistentRecord(
        class_name=str(meta.get("class_name")),
        state=dict(state) if isinstance(state, Mapping) else {},
        module_src_sha256=hashlib.sha256(src.encode()).hexdigest() if isinstance(src, str) else None,
        version=meta.get("version"),
    )


def _tensor_view(storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
    if not isinstance(storage, _Storage) or storage.data is None:
        raise CorruptCheckpointError("a tensor refers to something that is not a storage")
    size, stride = tuple(size), tuple(stride)
    if not (isinstance(offset, int) and offset >= 0 and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
        raise CorruptCheckpointError(f"malformed tensor layout (offset {offset!r}, size {size}, stride {stride})")
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) + 1
    if 0 not in size and extent > storage.data.size:
        raise CorruptCheckpointError(f"tensor of size {size} runs past its storage of {storage.data.size} elements")
    item = storage.data.itemsize
    base = storage.data[offset:] if 0 not in size else storage.data[:0]
    arr = np.lib.stride_tricks.as_strided(base, shape=size, strides=[s * item for s in stride]) if 0 not in size else np.zeros(size, storage.dtype)
    arr = np.array(arr, copy=True)
    if storage.dtype == np.uint16 and getattr(storage, "bfloat16", False):
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    return _tensor_view(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    if not isinstance(data, np.ndarray):
        raise CorruptCheckpointError("a parameter does not hold a tensor")
    return data


def _set(items: Any = ()) -> set[Any]:
    return set(items)


def _frozenset(items: Any = ()) -> frozenset[Any]:
    return frozenset(items)


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``, which protocol-2 pickles use for bytes objects (latin-1 only)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise CorruptCheckpointError("unexpected use of _codecs.encode")
    return text.encode("latin1")


def _np_dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for plain numeric / boolean dtypes only (numpy scalars in module
    attributes, such as NVlabs' weight gains, are pickled with one)."""
    if not isinstance(name, str) or np.dtype(name).kind not in "biufc":
        raise CorruptCheckpointError(f"unsupported numpy dtype {str(name)[:40]!r}")
    return np.dtype(name)


def _np_scalar(dtype: Any, data: Any = b"") -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise CorruptCheckpointError("unsupported numpy scalar")
    return np.frombuffer(data, dtype)[0]


def _np_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise CorruptCheckpointError("numpy reconstruction of something other than an ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _refuse(module: str, name: str) -> Any:
    what = f"{module}.{name}"
    if module.startswith("dnnlib.tflib"):
        raise UnsafeCheckpointError(
            f"refused: {what} is a TensorFlow-era StyleGAN pickle; convert it to a PyTorch one "
            "first (NVlabs stylegan2-ada-pytorch legacy.py, or rosinality convert_weight.py)"
        )
    raise UnsafeCheckpointError(
        f"refused: the pickle references {what}, which is not on the allow-list of tensor and "
        "container globals; nothing from the file was run"
    )


def _load_from_bytes(data: Any) -> _Storage:
    if not isinstance(data, bytes | bytearray):
        raise CorruptCheckpointError("a storage is not stored as bytes")
    return load_storage_bytes(bytes(data))


# (module, name) -> stand-in. ``__builtin__`` is Python 2's name, used by protocol-2 pickles.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("__builtin__", "set"): _set,
    ("__builtin__", "frozenset"): _frozenset,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
}


class NetworkUnpickler(pickle.Unpickler):
    """Unpickler of the outer network pickle: :data:`ALLOWED_GLOBALS` only, no persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            return _refuse(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptCheckpointError("unexpected persistent id in a network pickle")


class _StorageUnpickler(pickle.Unpickler):
    """Unpickler of one legacy ``torch.save`` of a storage: storage classes only; persistent
    ids become :class:`_Storage` placeholders filled from the raw bytes that follow."""

    def __init__(self, fh: BinaryIO, storages: dict[str, _Storage], views: list[Any]) -> None:
        super().__init__(fh)
        self.storages, self.views = storages, views

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        return _refuse(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise CorruptCheckpointError(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel, view = pid
        if key not in self.storages:
            s = _Storage(stype.dtype, numel)
            s.bfloat16 = stype.name == "BFloat16Storage"  # type: ignore[attr-defined]
            self.storages[key] = s
        if view is None:
            return self.storages[key]
        view_key, offset, size = view
        out = _Storage(stype.dtype, size)
        self.views.append((out, self.storages[key], int(offset), int(size), view_key))
        return out


def load_storage_bytes(data: bytes) -> _Storage:
    """A storage from the legacy ``torch.save`` bytes ``torch.storage._load_from_bytes`` gets."""
    fh = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    views: list[Any] = []
    try:
        header = _StorageUnpickler(fh, storages, views)
        if header.load() != LEGACY_MAGIC:
            raise CorruptCheckpointError("a storage is not in torch's legacy format (bad magic number)")
        header.load()  # protocol version
        info = header.load()
        if isinstance(info, Mapping) and info.get("little_endian") is False:
            raise CorruptCheckpointError("big-endian storages are not supported")
        obj = _StorageUnpickler(fh, storages, views).load()
        keys = _StorageUnpickler(fh, storages, views).load()
        if not isinstance(keys, list) or set(keys) != set(storages):
            raise CorruptCheckpointError("a storage's key list does not match its ids")
        for key in keys:
            s = storages[key]
            (numel,) = struct.unpack("<q", fh.read(8))
            raw = fh.read(numel * s.dtype.itemsize)
            if numel != s.numel or len(raw) != numel * s.dtype.itemsize:
                raise CorruptCheckpointError("a storage's data is truncated")
            s.data = np.frombuffer(raw, dtype=s.dtype.newbyteorder("<")).astype(s.dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError) as exc:
        if isinstance(exc, ConversionError):
            raise
        raise CorruptCheckpointError(f"a storage cannot be read ({exc})") from exc
    for out, root, offset, size, _ in views:
        if root.data is None or offset + size > root.data.size:
            raise CorruptCheckpointError("a storage view runs past its storage")
        out.data = root.data[offset : offset + size]
    if not isinstance(obj, _Storage):
        raise CorruptCheckpointError("a storage pickle does not hold a storage")
    return obj


def read_network_pickle(path: str | Path) -> Any:
    """The object tree of a network pickle: modules as :class:`PersistentRecord`, tensors as
    NumPy arrays. Nothing in the file is executed."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return NetworkUnpickler(fh).load()
    except ConversionError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError,
            IndexError, KeyError, struct.error, MemoryError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{path}: truncated or corrupt network pickle ({exc})") from exc


def record_tensors(record: PersistentRecord, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A module record's state dict (``name -> array``, parameters and persistent buffers of
    it and its sub-modules) and the class of every sub-module (``path -> class name``)."""
    tensors: dict[str, np.ndarray] = {}
    classes = {prefix.rstrip("."): record.class_name}
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, np.ndarray):
                raise CorruptCheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise ArchitectureError(f"sub-module {prefix}{name} is a {type(child).__name__}, not an NVlabs module")
        t, c = record_tensors(child, f"{prefix}{name}.")
        tensors.update(t)
        classes.update(c)
    return tensors, classes


_G_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
# init kwarg -> (config field or None: accepted and ignored, required value or None: any).
_MAPPING_KWARGS = {
    "num_layers": ("mapping_layers", None), "embed_features": ("embed_features", None),
    "layer_features": ("layer_features", None), "activation": ("mapping_activation", None),
    "lr_multiplier": ("mapping_lr_multiplier", None), "w_avg_beta": (None, None),
}
_SYNTHESIS_KWARGS = {
    "channel_base": ("channel_base", None), "channel_max": ("channel_max", None),
    "num_fp16_res": ("num_fp16_res", None), "conv_clamp": ("conv_clamp", None),
    "use_noise": ("use_noise", None), "architecture": (None, "skip"),
    "resample_filter": (None, [1, 3, 3, 1]), "activation": (None, "lrelu"),
    "kernel_size": (None, 3), "fp16_channels_last": (None, None),
    "fused_modconv_default": (None, None),
}
_CLASSES = {"Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock",
            "SynthesisLayer", "ToRGBLayer", "FullyConnectedLayer"}


def _kwargs(record: PersistentRecord, source: str) -> dict[str, Any]:
    args = tuple(record.state.get("_init_args") or ())
    kwargs = dict(record.state.get("_init_kwargs") or {})
    if len(args) > len(_G_ARGS):
        raise ArchitectureError(f"{source}: the generator was built with {len(args)} positional arguments")
    kwargs.update(zip(_G_ARGS, args, strict=False))
    missing = [k for k in _G_ARGS[:5] if k not in kwargs]
    if missing:
        raise ArchitectureError(f"{source}: the generator's recorded init arguments lack {preview(missing)}")
    return kwargs


def _config_from_kwargs(kwargs: dict[str, Any], source: str, **settings: Any) -> stylegan2.StyleGAN2Config:
    fields: dict[str, Any] = {
        "z_dim": kwargs["z_dim"], "w_dim": kwargs["w_dim"], "num_classes": kwargs["c_dim"],
        "img_resolution": kwargs["img_resolution"], "img_channels": kwargs["img_channels"],
    }
    extra = sorted(set(kwargs) - set(_G_ARGS))
    if extra:
        raise ArchitectureError(f"{source}: unsupported Generator init arguments {preview(extra)}")
    for group, table in (("mapping_kwargs", _MAPPING_KWARGS), ("synthesis_kwargs", _SYNTHESIS_KWARGS)):
        given = dict(kwargs.get(group) or {})
        unknown = sorted(set(given) - set(table))
        if unknown:
            raise ArchitectureError(f"{source}: unsupported {group} {preview(unknown)}")
        for key, value in given.items():
            field, required = table[key]
            if required is not None and value != required:
                what = {"architecture": "synthesis architecture (only 'skip' is supported)"}.get(key, key)
                raise ArchitectureError(f"{source}: {what} {value!r} is not supported (expected {required!r})")
            if key == "w_avg_beta" and value is None:
                raise ArchitectureError(f"{source}: the mapping network tracks no w_avg (w_avg_beta=None)")
            if field is not None:
                fields[field] = value
    for key in ("embed_features", "layer_features"):
        fields[key] = int(fields.get(key) or 0)
    if fields.get("conv_clamp") is not None:
        fields["conv_clamp"] = float(fields["conv_clamp"])
    try:
        return stylegan2.StyleGAN2Config(**fields, **settings)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{source}: {exc}") from exc


def _check_classes(classes: dict[str, str], source: str) -> None:
    names = set(classes.values())
    if "SynthesisInput" in names or any(c.endswith("StyleGAN3") for c in names):
        raise ArchitectureError(
            f"{source}: a StyleGAN3 generator (alias-free: SynthesisInput and L*_ layers); only "
            "StyleGAN2 generators (stylegan2-ada-pytorch networks) are supported"
        )
    unknown = sorted({f"{c} at {p or 'the root'}" for p, c in classes.items() if c not in _CLASSES})
    if unknown or classes.get("") != "Generator":
        raise ArchitectureError(
            f"{source}: not an NVlabs StyleGAN2 Generator (module classes {preview(unknown or [classes.get('', '?')])})"
        )


def convert_stylegan_pickle(
    src: str | Path,
    *,
    network: str = "G_ema",
    input_space: str = "z",
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "none",
    image_size: int | None = None,
) -> Converted:
    """Read an NVlabs network pickle and convert its generator (nothing is written or run).

    Args:
        src: a ``network-snapshot-*.pkl`` with ``G``, ``D``, ``G_ema`` (``augment_pipe``).
        network: ``"G_ema"`` (default: the moving average NVlabs samples from) or ``"G"``.
        input_space, truncation_psi, truncation_cutoff, noise_mode: the Generator's settings,
            stored in the card (see ``ronan_jax.models.stylegan2.make_generator``).
        image_size: expected output size, verified against the generator's.
    """
    src = Path(src)
    source = str(src)
    network = {n.lower(): n for n in NETWORKS}.get(str(network).lower(), network)
    if network not in NETWORKS:
        raise ConversionError(f"network must be one of {NETWORKS}, got {network!r}")
    data = read_network_pickle(src)
    if not isinstance(data, Mapping) or not isinstance(data.get(network), PersistentRecord):
        have = sorted(map(str, data)) if isinstance(data, Mapping) else [type(data).__name__]
        raise ConversionError(f"{source}: no network {network!r} in the pickle (it holds {preview(have)})")
    record = data[network]
    tensors, classes = record_tensors(record)
    _check_classes(classes, source)
    config = _config_from_kwargs(
        _kwargs(record, source), source, input_space=input_space, truncation_psi=float(truncation_psi),
        truncation_cutoff=truncation_cutoff, noise_mode=noise_mode,
    )
    if image_size is not None and int(image_size) != config.img_resolution:
        raise ArchitectureError(
            f"{source}: the generator makes {config.img_resolution}x{config.img_resolution} images, "
            f"not the expected {image_size}x{image_size}"
        )
    for key, value in tensors.items():
        require_finite(value, f"{network}.{key}", source)
    variables = nvlabs_variables(tensors, config, f"{source} [{network}]")
    summary = {
        "network": network,
        "networks_in_pickle": sorted(str(k) for k, v in data.items() if isinstance(v, PersistentRecord)),
        "z_dim": config.z_dim, "w_dim": config.w_dim, "c_dim": config.num_classes,
        "img_resolution": config.img_resolution, "img_channels": config.img_channels,
        "num_ws": config.num_ws,
        "channels": {str(r): config.channels(r) for r in config.resolutions},
        "conv_clamp": config.conv_clamp,
        "num_fp16_res": config.num_fp16_res,
        "precision": "float32 throughout (NVlabs force_fp32=True)",
        "input_space": config.input_space, "truncation_psi": config.truncation_psi,
        "truncation_cutoff": config.truncation_cutoff, "noise_mode": config.noise_mode,
        "module_src_sha256": sorted({r for r in _sources(record) if r}),
        "output_shape": [config.img_resolution, config.img_resolution, config.img_channels],
    }
    return Converted(
        architecture="stylegan2",
        config=dataclasses.asdict(config),
        variables=variables,
        summary=summary,
        sources={str(src): sha256_file(src)},
    )


def _sources(record: PersistentRecord) -> list[str | None]:
    out = [record.module_src_sha256]
    for child in (record.state.get("_modules") or {}).values():
        if isinstance(child, PersistentRecord):
            out += _sources(child)
    return out
