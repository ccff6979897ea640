"""`ronan convert` end to end: a PyTorch DCGAN state dict -> profile -> audit."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from e2e_helpers import db_rows, invoke
from PIL import Image
from test_converters_dcgan import make_torch_dcgan

from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.models.checkpoint import load_generator


def _write_rgb(path: Path, img: np.ndarray) -> None:
    u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("convert")
    model = make_torch_dcgan(seed=3, nz=8, ngf=4, nc=3, depth=5)  # 64x64 colour
    torch.save({"netG_state_dict": model.state_dict(), "epoch": 7}, base / "netG.pth")
    out = base / "my-dcgan"
    res = invoke(["convert", base / "netG.pth", "-o", out])
    assert res.exit_code == 0, res.output
    assert "Found dcgan" in res.output
    return out


def test_converted_64px_dcgan_profiles_and_audits_end_to_end(converted, tmp_path):
    profile = tmp_path / "p.json"
    res = invoke(["profile", "--model", converted, "--reference", "none", "--samples", "12",
                  "--steps", "80", "--restarts", "2", "--quiet", "--trim-outliers", "-o", profile])
    assert res.exit_code == 0, res.output
    written = json.loads(profile.read_text())
    assert f"({len(written['trimmed'])} outliers trimmed)" in res.output
    assert written["n"] == 12 - len(written["trimmed"])
    _rerun_with_other_statistics_inverts_nothing(converted, profile, written)
    gen = load_generator(converted)
    own = quantize_8bit(np.asarray(gen.generate(jax.random.key(11), 4)))
    for i, img in enumerate(own):
        _write_rgb(tmp_path / "imgs" / f"own_{i}.png", img)
    from skimage import data

    photos = [data.astronaut(), data.coffee()]
    for i in range(4):
        photo = photos[i % 2]
        y, x = 40 + 60 * i, 80 + 50 * i
        _write_rgb(tmp_path / "imgs" / f"photo_{i}.png", photo[y : y + 64, x : x + 64] / 255.0)
    db = tmp_path / "a.sqlite"
    res = invoke(["audit", tmp_path / "imgs", "--model", converted, "--reference", "none",
                  "--profile", profile, "--db", db, "--quiet"])
    assert res.exit_code == 0, res.output
    rows = db_rows(db)
    verdicts = {Path(r["path"]).stem: r["verdict"] for r in rows}
    own_loss = max(r["loss"] for r in rows if Path(r["path"]).stem.startswith("own"))
    photo_loss = min(r["loss"] for r in rows if Path(r["path"]).stem.startswith("photo"))
    assert own_loss * 100 < photo_loss, (own_loss, photo_loss)
    assert verdicts == {**{f"own_{i}": "belonging" for i in range(4)},
                        **{f"photo_{i}": "non-belonging" for i in range(4)}}


def _rerun_with_other_statistics_inverts_nothing(model: Path, profile: Path, first: dict) -> None:
    """`ronan profile` again with the same output but other statistics reuses its losses."""
    import ronan_jax.attribution.build as profile_module

    def refuse(*a, **k):
        raise AssertionError("the rerun inverted an image again")

    assert profile.with_suffix(".progress.jsonl").is_file()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(profile_module, "calibrated_losses", refuse)
        res = invoke(["profile", "--model", model, "--reference", "none", "--samples", "12",
                      "--steps", "80", "--restarts", "2", "--quiet", "--alpha", "0.01",
                      "-o", profile])
    assert res.exit_code == 0, res.output
    again = json.loads(profile.read_text())
    assert again["calibrated_losses"] == first["calibrated_losses"]
    assert again["n"] == 12 and again["alpha"] == 0.01 and again["trimmed"] == []
    assert "a rerun of this command reuses them" in res.output
    res = invoke(["profile", "--model", model, "--reference", "none", "--samples", "12",
                  "--steps", "80", "--restarts", "2", "--quiet", "--trim-outliers",
                  "-o", profile])  # back to the settings the audit below expects
    written = json.loads(profile.read_text())
    assert res.exit_code == 0 and written == {
        **first, "created": written["created"], "digest": written["digest"]}


def test_bad_checkpoint_is_one_clear_usage_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a torch checkpoint")
    res = invoke(["convert", bad, "-o", tmp_path / "out"])
    assert res.exit_code == 2
    assert "cannot convert" in res.output
    assert "Traceback" not in res.output
