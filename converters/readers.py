"""Reading checkpoint files into NumPy, safely: the common layer of every converter.

* ``.safetensors`` is read with ``safetensors.numpy`` (no torch needed); bfloat16 tensors,
  which NumPy cannot hold, are widened to float32 by a small header-driven reader.
* PyTorch files (``.pth``/``.pt``/``.bin``/``.ckpt``, zip or legacy pre-1.6 format) are read
  with ``torch.load(map_location="cpu", weights_only=True)``: tensors saved on CUDA load on a
  CPU-only machine, and a checkpoint that needs arbitrary code to unpickle (a custom class,
  a function) is refused with :class:`UnsafeCheckpointError`. Nothing from a checkpoint is
  ever executed. The one non-tensor class let through is ``argparse.Namespace`` (training
  scripts commonly store their arguments; rebuilding one sets attributes, it runs no code).

The format is recognised from the file's first bytes, not its extension. Every failure is a
one-line :class:`ConversionError` naming the file.
"""

from __future__ import annotations

import argparse
import json
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import (
    ConversionError,
    CorruptCheckpointError,
    KeyMismatchError,
    NonFiniteTensorError,
    UnsafeCheckpointError,
    preview,
)

_ZIP_MAGIC = b"PK\x03\x04"
_SAFE_GLOBALS = (argparse.Namespace,)


def sniff(path: str | Path) -> str:
    """``"safetensors"``, ``"torch-zip"`` or ``"torch-legacy"`` from the file's first bytes."""
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path}: is a folder; expected a checkpoint file")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError as exc:  # permissions, I/O errors, a file removed meanwhile
        raise ConversionError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol opcode: torch.save's legacy format
        return "torch-legacy"
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8:
            return "safetensors"
    raise CorruptCheckpointError(
        f"{path}: not a PyTorch (zip or legacy) or safetensors checkpoint "
        f"({size} bytes, starts with {head[:8]!r})"
    )


def is_network_pickle(path: str | Path, max_ops: int = 5000) -> bool:
    """Whether the file is a pickle whose first globals include NVlabs' persistence hook or
    dnnlib (an NVlabs network pickle). Opcodes are scanned, nothing is unpickled."""
    strings: list[str] = []
    try:
        with Path(path).open("rb") as fh:
            for i, (op, arg, _) in enumerate(pickletools.genops(fh)):
                if i >= max_ops:
                    break
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    module = arg.split(" ")[0]
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    module = strings[-2]
                else:
                    if isinstance(arg, str):
                        strings.append(arg)
                    continue
                if module.startswith(("torch_utils", "dnnlib")):
                    return True
    except (ValueError, EOFError, OSError, pickle.UnpicklingError, struct.error):
        return False
    return False


def checkpoint_strings(
    path: str | Path, kind: str, wanted: Iterable[str], max_ops: int = 2_000_000
) -> set[str]:
    """Which of ``wanted`` occur as keys (safetensors) or pickled strings (PyTorch zip or
    legacy) in a checkpoint of ``kind`` (:func:`sniff`); for recognising a format without
    loading it. Nothing is unpickled; unreadable files give the empty set."""
    wanted = set(wanted)
    found: set[str] = set()
    try:
        if kind == "safetensors":
            with Path(path).open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                return wanted & set(json.loads(fh.read(n)))
        if kind == "torch-zip":
            with zipfile.ZipFile(path) as zf:
                names = [m for m in zf.namelist() if m.endswith("data.pkl")]
                if not names:
                    return found
                with zf.open(names[0]) as fh:
                    _scan_strings(fh, wanted, found, max_ops, pickles=1)
            return found
        with Path(path).open("rb") as fh:  # legacy: magic, version, sys info, then the object
            _scan_strings(fh, wanted, found, max_ops, pickles=4)
    except (ValueError, EOFError, OSError, pickle.UnpicklingError, struct.error, zipfile.BadZipFile):
        pass
    return found


def _scan_strings(fh: Any, wanted: set[str], found: set[str], max_ops: int, pickles: int) -> None:
    ops = 0
    for _ in range(pickles):
        for _op, arg, _pos in pickletools.genops(fh):
            ops += 1
            if isinstance(arg, str) and arg in wanted:
                found.add(arg)
                if found == wanted:
                    return
            if ops >= max_ops:
                return


def load_checkpoint(path: str | Path) -> Any:
    """The checkpoint's object tree with every tensor as a NumPy array.

    Safetensors files give a flat ``{key: array}`` dict; PyTorch files give whatever was saved
    (a state dict, or a dict wrapping one next to epochs, optimiser states, ...), with
    dicts, lists and tuples kept and tensors converted.
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        return _load_safetensors(path)
    return _load_torch(path)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A flat ``{key: array}`` state dict from a file that holds exactly one."""
    obj = load_checkpoint(path)
    if not is_state_dict(obj):
        raise ConversionError(f"{path}: does not hold a flat state dict of tensors")
    return dict(obj)


# ----------------------------------------------------------------------------- safetensors


_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    import safetensors.numpy

    try:
        loaded = safetensors.numpy.load_file(str(path))
        # With ml_dtypes registered (jax imports it) NumPy holds bfloat16: widen it the same.
        return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in loaded.items()}
    except TypeError:  # a dtype NumPy lacks (bfloat16): read the raw layout ourselves
        return _load_safetensors_raw(path)
    except Exception as exc:  # SafetensorError and friends
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt safetensors file ({_first_line(exc)})"
        ) from exc


def _load_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
    """Safetensors reader for dtypes ``safetensors.numpy`` refuses; BF16 becomes float32."""
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = memoryview(data)[8 + n :]
        out = {}
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            if end > len(body):
                raise ValueError(f"tensor {key!r} runs past the end of the file")
            raw = body[start:end]
            shape = tuple(meta["shape"])
            if meta["dtype"] == "BF16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                out[key] = bits.view(np.float32).reshape(shape)
            elif meta["dtype"] in _ST_DTYPES:
                out[key] = np.frombuffer(raw, dtype=np.dtype(_ST_DTYPES[meta["dtype"]]).newbyteorder("<")).reshape(shape).copy()
            else:
                raise ValueError(f"tensor {key!r} has unsupported dtype {meta['dtype']}")
        return out
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt safetensors file ({_first_line(exc)})"
        ) from exc


# ----------------------------------------------------------------------------- torch


def _load_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the convert extra installs torch
        raise ConversionError(
            f"{path}: reading PyTorch checkpoints needs torch (pip install 'ronan-jax[convert]')"
        ) from exc
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is not None:
            with safe(list(_SAFE_GLOBALS)):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:  # pragma: no cover - torch < 2.5
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f"it references {found.group(1)}" if found else "it needs objects beyond tensors"
            raise UnsafeCheckpointError(
                f"{path}: refused: unpickling it would need arbitrary code ({what}); only "
                "tensors, containers and numbers are read and nothing from the file is run; "
                "re-save the state dict alone (torch.save(model.state_dict(), ...))"
            ) from exc
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({_first_line(exc)})"
        ) from exc
    except Exception as exc:  # RuntimeError (zip reader), EOFError, KeyError, ...
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({_first_line(exc)})"
        ) from exc
    return _to_numpy_tree(obj, torch)


def _to_numpy_tree(obj: Any, torch: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return np.array(t.numpy(), copy=True)
    if isinstance(obj, Mapping):
        return {k: _to_numpy_tree(v, torch) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy_tree(v, torch) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_numpy_tree(v, torch) for v in obj)
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return line if len(line) <= 160 else line[:157] + "..."


# ----------------------------------------------------------------------------- state dicts


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping from string keys to arrays."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def find_state_dict(
    obj: Any, candidates: Iterable[str], key: str | None = None, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], str | None]:
    """The state dict inside a checkpoint and where it was found.

    ``obj`` may be a state dict itself, or a dict wrapping one (``{"netG": sd, "netD": ...,
    "epoch": 7}``). ``key`` names the entry explicitly (``"a/b"`` descends nested dicts);
    otherwise the first of ``candidates`` present and holding a state dict wins. Returns
    ``(state_dict, key_or_None)``.
    """
    if key is not None:
        node = obj
        for part in key.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                have = sorted(map(str, obj)) if isinstance(obj, Mapping) else []
                raise ConversionError(
                    f"{source}: no entry {key!r} in the checkpoint (top-level keys: {preview(have)})"
                )
            node = node[part]
        if not is_state_dict(node):
            inside = f" (it holds {preview(sorted(map(str, node)))})" if isinstance(node, Mapping) else ""
            raise ConversionError(f"{source}: entry {key!r} is not a state dict of tensors{inside}")
        return dict(node), key
    if is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for name in candidates:
            if name in obj and is_state_dict(obj[name]):
                return dict(obj[name]), name
        nested = [str(k) for k, v in obj.items() if is_state_dict(v)]
        if len(nested) == 1:
            return dict(obj[nested[0]]), nested[0]
        if nested:
            raise ConversionError(
                f"{source}: several state dicts in the checkpoint ({preview(nested)}); "
                "name the generator's with key=..."
            )
        have = sorted(map(str, obj))
        raise ConversionError(f"{source}: no state dict of tensors found (keys: {preview(have)})")
    raise ConversionError(f"{source}: holds a {type(obj).__name__}, not a state dict")


def strip_prefixes(
    state: Mapping[str, np.ndarray], prefixes: Iterable[str] = ("module.",)
) -> dict[str, np.ndarray]:
    """Remove leading ``prefixes`` (repeatedly, e.g. ``module.module.``) from every key that
    has them; used for ``nn.DataParallel`` / ``DistributedDataParallel`` state dicts."""
    prefixes = tuple(prefixes)
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p) :]
                    changed = True
        if k in out:
            raise ConversionError(f"key {k!r} appears twice after removing prefixes {prefixes}")
        out[k] = v
    return out


def require_finite(tensor: np.ndarray, key: str, source: str) -> np.ndarray:
    """``tensor`` itself when it holds no NaN or infinity (integer and boolean tensors always
    pass); otherwise :class:`NonFiniteTensorError` naming ``key``. Converters refuse such
    weights rather than write a generator whose every output would be NaN."""
    if np.issubdtype(tensor.dtype, np.floating) and not np.all(np.isfinite(tensor)):
        raise NonFiniteTensorError(f"{source}: tensor {key} holds NaN or infinite values")
    return tensor


class TensorTable:
    """A state dict being consumed: :meth:`take` each tensor the architecture uses, then
    :meth:`finish` raises one :class:`KeyMismatchError` listing every missing and every
    unused key (nothing is silently dropped)."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str = "checkpoint") -> None:
        self.tensors = dict(tensors)
        self.source = source
        self.used: set[str] = set()
        self.missing: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, *aliases: str) -> np.ndarray | None:
        """The tensor under ``key`` (or the first present alias); records it as used, or as
        missing (returns ``None``) when absent."""
        for k in (key, *aliases):
            if k in self.tensors:
                self.used.add(k)
                return self.tensors[k]
        self.missing.append(key)
        return None

    def ignore(self, *keys: str) -> None:
        """Mark keys as consumed without using them (e.g. BatchNorm ``num_batches_tracked``)."""
        self.used.update(k for k in keys if k in self.tensors)

    def finish(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        problems = []
        if self.missing:
            problems.append(f"missing keys: {preview(self.missing)}")
        if unused:
            problems.append(f"unused keys: {preview(unused)}")
        if problems:
            raise KeyMismatchError(
                f"{self.source}: state dict does not match the architecture: " + "; ".join(problems)
            )
