"""``converters.api``: format detection, dispatch table, and the model card ``convert`` writes."""

from __future__ import annotations

import hashlib
import json

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
