"""Checkpoint readers: every container format to NumPy, and one-line refusals of unsafe,
truncated and foreign files."""

from __future__ import annotations

import argparse
import os
import zipfile

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from torch_helpers import save_cuda_tagged

from converters.errors import (
    ConversionError,
    CorruptCheckpointError,
    KeyMismatchError,
    NonFiniteTensorError,
    UnsafeCheckpointError,
)
from converters.readers import (
    TensorTable,
    find_state_dict,
    load_checkpoint,
    load_state_dict,
    require_finite,
    sniff,
    strip_prefixes,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "main.0.weight": torch.randn(3, 4, 4, 4, generator=g),
        "main.1.running_var": torch.rand(4, generator=g),
        "main.1.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(5, generator=g).half(),
    }


def _same(loaded: dict[str, np.ndarray], state: dict[str, torch.Tensor]) -> None:
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert isinstance(loaded[k], np.ndarray)
        assert loaded[k].dtype == v.numpy().dtype and np.array_equal(loaded[k], v.numpy())




def test_safetensors_without_torch_path(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int64)}
    safetensors.numpy.save_file(arrays, str(tmp_path / "x.safetensors"))
    assert sniff(tmp_path / "x.safetensors") == "safetensors"
    out = load_state_dict(tmp_path / "x.safetensors")
    assert all(np.array_equal(out[k], arrays[k]) for k in arrays)


def test_safetensors_bfloat16_is_widened(tmp_path):
    t = torch.randn(4, 3).bfloat16()
    safetensors.torch.save_file({"w": t, "f": torch.ones(2)}, str(tmp_path / "bf.safetensors"))
    out = load_state_dict(tmp_path / "bf.safetensors")
    assert out["w"].dtype == np.float32 and np.array_equal(out["w"], t.float().numpy())
    assert np.array_equal(out["f"], np.ones(2, np.float32))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("cuda", [False, True])
def test_torch_formats(tmp_path, legacy, cuda):
    state = _state()
    path = tmp_path / "sd.pth"
    if cuda:
        save_cuda_tagged(state, path, legacy)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert sniff(path) == ("torch-legacy" if legacy else "torch-zip")
    if cuda and not legacy:
        with zipfile.ZipFile(path) as zf:
            assert b"cuda:0" in zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    elif cuda:
        assert b"cuda:0" in path.read_bytes()
    _same(load_state_dict(path), state)


def test_torch_bfloat16_and_nested_wrapper(tmp_path):
    state = {"w": torch.randn(3).bfloat16()}
    ckpt = {"netG": state, "epoch": 3, "hist": [1.0, 2.0], "args": argparse.Namespace(nz=100)}
    torch.save(ckpt, tmp_path / "c.pt")
    obj = load_checkpoint(tmp_path / "c.pt")
    assert obj["epoch"] == 3 and obj["hist"] == [1.0, 2.0] and obj["args"].nz == 100
    assert obj["netG"]["w"].dtype == np.float32
    with pytest.raises(ConversionError, match="not hold a flat state dict"):
        load_state_dict(tmp_path / "c.pt")


class _Custom:
    pass


class _Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(info) -> str:
    msg = str(info.value)
    assert msg and "\n" not in msg and "\x1b" not in msg
    return msg


def test_custom_class_is_refused(tmp_path):
    torch.save({"sd": _state(), "cfg": _Custom()}, tmp_path / "c.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt")
    assert "_Custom" in _one_line(info)


@pytest.mark.parametrize("legacy", [False, True])
def test_code_in_pickle_is_never_run(tmp_path, legacy):
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(str(marker))}, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "system" in _one_line(info)
    assert not marker.exists()


@pytest.mark.parametrize(
    "kind", ["zip", "legacy", "safetensors", "garbage", "empty", "html"]
)
def test_truncated_and_foreign_files(tmp_path, kind):
    path = tmp_path / "bad.pth"
    if kind in ("zip", "legacy"):
        torch.save(_state(), path, _use_new_zipfile_serialization=kind == "zip")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "safetensors":
        path = tmp_path / "bad.safetensors"
        safetensors.torch.save_file(_state(), str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 10])
    elif kind == "garbage":
        path.write_bytes(os.urandom(64).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"<html><body>Not Found</body></html>")
    with pytest.raises(CorruptCheckpointError) as info:
        load_checkpoint(path)
    _one_line(info)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(ConversionError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_find_state_dict_and_prefixes():
    sd = {"a.weight": np.zeros(2)}
    assert find_state_dict(sd, ("netG",)) == (sd, None)
    assert find_state_dict({"netG": sd, "netD": {"b": np.ones(1)}}, ("netG",))[1] == "netG"
    assert find_state_dict({"only": sd, "epoch": 1}, ("netG",))[1] == "only"
    assert find_state_dict({"x": {"y": sd}}, (), key="x/y")[1] == "x/y"
    with pytest.raises(ConversionError, match="several state dicts"):
        find_state_dict({"a": sd, "b": sd}, ("netG",))
    with pytest.raises(ConversionError, match="no entry 'z'"):
        find_state_dict({"a": sd}, (), key="z")
    with pytest.raises(ConversionError, match="no state dict"):
        find_state_dict({"epoch": 1}, ("netG",))
    assert set(strip_prefixes({"module.module.x": 1, "y": 2})) == {"x", "y"}  # type: ignore[dict-item]
    with pytest.raises(ConversionError, match="appears twice"):
        strip_prefixes({"module.x": 1, "x": 2})  # type: ignore[dict-item]


def test_tensor_table_lists_missing_and_unused():
    table = TensorTable({"a": np.zeros(1), "old": np.zeros(1), "extra": np.zeros(1), "n": np.zeros(1)}, "f.pth")
    assert table.take("a") is not None
    assert table.take("new", "old") is not None  # alias
    assert table.take("gone") is None
    table.ignore("n")
    with pytest.raises(KeyMismatchError) as info:
        table.finish()
    assert _one_line(info) == (
        "f.pth: state dict does not match the architecture: missing keys: gone; unused keys: extra"
    )


def test_require_finite_passes_finite_and_integer_tensors_through():
    weights = np.linspace(-1, 1, 6, dtype=np.float16)
    counts = np.array([0, 2**62], dtype=np.int64)
    assert require_finite(weights, "w", "f.pth") is weights
    assert require_finite(counts, "num_batches_tracked", "f.pth") is counts


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_require_finite_refuses_nan_and_infinity_naming_the_tensor(bad):
    tensor = np.ones((2, 3), np.float32)
    tensor[1, 2] = bad
    with pytest.raises(NonFiniteTensorError) as info:
        require_finite(tensor, "decoder.conv_in.weight", "vae/model.safetensors")
    assert _one_line(info) == (
        "vae/model.safetensors: tensor decoder.conv_in.weight holds NaN or infinite values"
    )
