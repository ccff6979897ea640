"""``converters.api``: format detection, dispatch table, and the model card ``convert`` writes."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_converters_dcgan import assert_parity, make_torch_dcgan

from converters import api
from converters.api import convert, converter_for, detect_format
from converters.base import CONVERTER_VERSION
from converters.errors import (
    ConversionError,
    CorruptCheckpointError,
    FormatNotAvailableError,
    UnknownFormatError,
)
from converters.formats import FORMATS
from ronan_jax.models.checkpoint import load_generator, read_card

torch.set_num_threads(1)


def _folder(path, name: str, data: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(data))


def test_detect_format(tmp_path):
    torch.save({"main.0.weight": torch.zeros(2, 2, 4, 4)}, tmp_path / "g.pth")
    assert detect_format(tmp_path / "g.pth") == "dcgan"
    _folder(tmp_path / "vae", "config.json", {"_class_name": "AutoencoderKL"})
    _folder(tmp_path / "unet", "config.json", {"_class_name": "UNet2DModel"})
    _folder(tmp_path / "cm", "model_index.json", {"_class_name": "ConsistencyModelPipeline"})
    _folder(tmp_path / "sd", "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    _folder(tmp_path / "ddpm", "model_index.json", {"_class_name": "DDPMPipeline"})
    assert detect_format(tmp_path / "vae") == "sd-vae"
    assert detect_format(tmp_path / "unet") == "diffusers-unet"
    assert detect_format(tmp_path / "cm") == "consistency"
    assert detect_format(tmp_path / "sd") == "sd-vae"
    assert detect_format(tmp_path / "ddpm") == "diffusers-unet"
    _folder(tmp_path / "t5", "config.json", {"_class_name": "T5EncoderModel"})
    with pytest.raises(UnknownFormatError, match="'T5EncoderModel' is not supported"):
        detect_format(tmp_path / "t5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownFormatError, match=r"without config\.json"):
        detect_format(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CorruptCheckpointError):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(ConversionError, match="no such file"):
        detect_format(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.txt", b"hello, not a checkpoint"),
        ("empty.pth", b""),
        ("state.pkl", pickle.dumps({"main.0.weight": [0.5]}, protocol=0)),
    ],
    ids=["text_file", "empty_file", "protocol_0_pickle"],
)
def test_detect_format_refuses_unrecognised_bytes(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ConversionError) as info:
        detect_format(path)
    assert info.type is CorruptCheckpointError
    assert str(info.value) == (
        f"{path}: not a PyTorch (zip or legacy) or safetensors checkpoint "
        f"({len(data)} bytes, starts with {data[:8]!r})"
    )


def test_detect_format_refuses_a_folder_without_recognisable_files(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({"main.0.weight": torch.zeros(2, 2, 4, 4)}, folder / "netG.pth")
    (folder / "README.md").write_text("a generator")
    (folder / "config.json").mkdir()  # a folder of that name is no config file
    with pytest.raises(ConversionError) as info:
        detect_format(folder)
    assert info.type is UnknownFormatError
    assert str(info.value) == f"{folder}: a folder without config.json or model_index.json"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000, b"[1, 2]"],
    ids=["invalid_json", "invalid_utf8", "nested_too_deep", "not_an_object"],
)
@pytest.mark.parametrize("name", ["config.json", "model_index.json"])
def test_detect_format_refuses_a_malformed_json_file(tmp_path, name, content):
    path = tmp_path / "model" / name
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ConversionError) as info:
        detect_format(path.parent)
    assert info.type is ConversionError
    assert str(info.value).startswith(f"{path}: ")
    assert "unreadable JSON" in str(info.value) or "expected a JSON object" in str(info.value)


@pytest.mark.parametrize("cls", [["AutoencoderKL"], {"name": "UNet2DModel"}, 7, None])
@pytest.mark.parametrize(("name", "kind"), [("config.json", "model class"), ("model_index.json", "pipeline")])
def test_detect_format_refuses_a_class_name_that_is_not_a_known_string(tmp_path, cls, name, kind):
    folder = tmp_path / "model"
    _folder(folder, name, {"_class_name": cls})
    with pytest.raises(ConversionError) as info:
        detect_format(folder)
    assert info.type is UnknownFormatError
    assert str(info.value).startswith(f"{folder}: diffusers {kind} {cls!r} is not supported")


def test_detect_format_refuses_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "netG.pth"
    torch.save({"main.0.weight": torch.zeros(2, 2, 4, 4)}, path)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ConversionError) as info:
        detect_format(path)
    assert info.type is ConversionError
    assert str(info.value) == f"{path}: cannot be read (Permission denied)"


def test_formats_constant_is_the_dispatch_table_and_needs_no_heavy_imports():
    assert FORMATS == ("dcgan", "sd-vae", "diffusers-unet", "consistency", "stylegan-pickle",
                       "stylegan-rosinality")
    assert tuple(api.CONVERTERS) == FORMATS
    assert set(api.MODEL_CLASSES.values()) | set(api.PIPELINE_CLASSES.values()) <= set(FORMATS)
    root = Path(api.__file__).resolve().parents[1]
    probe = (
        "import sys; from converters.formats import FORMATS; "
        "print(','.join(FORMATS)); "
        "print(','.join(m for m in ('torch', 'jax', 'numpy', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env={"PYTHONPATH": str(root)},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out == [",".join(FORMATS), ""]


def test_dispatch_table(monkeypatch):
    assert converter_for("dcgan").__name__ == "convert_dcgan"
    assert converter_for("sd-vae").__name__ == "convert_sd_vae"
    with pytest.raises(UnknownFormatError, match="unknown format 'onnx'"):
        converter_for("onnx")
    monkeypatch.setitem(api.CONVERTERS, "future", ("converters.not_written_yet", "convert_future"))
    with pytest.raises(FormatNotAvailableError, match="not available yet"):
        converter_for("future")
    monkeypatch.setitem(api.CONVERTERS, "half", ("converters.errors", "convert_half"))
    with pytest.raises(FormatNotAvailableError, match="has no convert_half"):
        converter_for("half")


def test_convert_writes_card_with_provenance(tmp_path):
    model = make_torch_dcgan(depth=4, nz=8, ngf=4, nc=3)
    src = tmp_path / "netG.pth"
    torch.save({"netG": model.state_dict(), "epoch": 1}, src)
    card = convert(src, tmp_path / "dcgan-tiny", nz=8)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert card == read_card(tmp_path / "dcgan-tiny")
    assert card["architecture"] == "dcgan" and card["format"] == "dcgan"
    assert card["name"] == "dcgan-tiny"
    assert card["source"]["sha256"] == sha and card["source"]["files"] == {str(src): sha}
    assert card["converter"]["version"] == CONVERTER_VERSION
    assert card["converter"]["options"] == {"nz": 8}
    assert card["config"]["nz"] == 8 and card["config"]["depth"] == 4
    s = card["summary"]
    assert s["state_dict_entry"] == "netG" and s["image_size"] == 32 and s["batchnorm"] is True
    gen = load_generator(tmp_path / "dcgan-tiny")
    assert gen.name == "dcgan-tiny" and gen.param_hash == card["param_hash"]
    assert_parity(gen, model, nz=8)


def test_convert_refusals(tmp_path):
    model = make_torch_dcgan(depth=4)
    torch.save(model.state_dict(), tmp_path / "g.pth")
    with pytest.raises(ConversionError, match="unknown option\\(s\\) nzz for format 'dcgan'"):
        convert(tmp_path / "g.pth", tmp_path / "out", nzz=8)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert(tmp_path / "g.pth", tmp_path / "busy")
    with pytest.raises(UnknownFormatError):
        convert(tmp_path / "g.pth", tmp_path / "out", fmt="onnx")
