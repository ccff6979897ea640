"""Hand-edited, damaged or malformed profiles are refused before any image is judged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ronan_jax.attribution.profile import PROFILE_FORMAT, Profile, ProfileError

SHIPPED = Path(__file__).resolve().parents[2] / "ronan_jax" / "zoo" / "profiles" / "dcgan-mnist.json"


@pytest.fixture()
def data() -> dict:
    return json.loads(SHIPPED.read_text())


def write(tmp_path: Path, data, name: str = "p.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def refused(tmp_path: Path, data, match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        Profile.load(write(tmp_path, data))


def test_the_shipped_profile_is_intact_and_sealed(data):
    assert data["format"] == PROFILE_FORMAT and len(data["digest"]) == 64
    assert Profile.load(SHIPPED).n == 100


@pytest.mark.parametrize(("field", "value", "match"), [
    ("mu", 100.0, "digest|mu"),
    ("sigma", 0.0, "sigma must be > 0"),
    ("sigma", -1.0, "sigma must be > 0"),
    ("n", 2, "N must be >= 3"),
    ("n", 0, "N must be >= 3"),
    ("n", 99, "N is 99 but its losses give 100"),
    ("alpha", 5, r"alpha must lie in \(0, 1\)"),
    ("mu", "0.3", "must be a finite number"),
    ("sigma", None, "must be a finite number"),
    ("n", "100", "must be an integer"),
    ("calibrated", None, "true or false"),
    ("image_shape", [32, 32], r"\[H, W, C\]"),
    ("model", None, "must be an object"),
])
def test_out_of_range_or_mistyped_fields_are_refused(tmp_path, data, field, value, match):
    data[field] = value
    refused(tmp_path, data, match)


def test_an_edited_mu_is_refused_even_with_a_recomputed_digest(tmp_path, data):
    from ronan_jax.attribution.profile_integrity import digest

    data["mu"] = 100.0
    data["digest"] = digest(data)
    refused(tmp_path, data, "mu is 100.0 but its losses give")


def test_a_changed_stored_loss_is_refused(tmp_path, data):
    data["calibrated_losses"][3] *= 1.5
    refused(tmp_path, data, "calibrated loss 3")
    fresh = json.loads(SHIPPED.read_text())
    fresh["losses"][5] *= 1.01  # consistent-looking, but the digest covers it
    fresh["calibrated_losses"][5] = fresh["losses"][5] / fresh["ref_losses"][5]
    refused(tmp_path, fresh, "mu is|digest")


def test_another_model_s_hash_is_refused_by_the_digest(tmp_path, data):
    data["model"]["param_hash"] = "0" * 64
    refused(tmp_path, data, "digest does not match")


@pytest.mark.parametrize("text", ["[]", "null", "42", '"profile"', "{", "", "\xff\xfe"])
def test_a_file_that_is_no_profile_object_is_refused(tmp_path, text):
    refused(tmp_path, text, "JSON object|cannot read profile")


def test_nan_and_infinity_in_a_profile_are_refused_by_name(tmp_path, data):
    text = json.dumps(data).replace(f'"mu": {json.dumps(data["mu"])}', '"mu": NaN', 1)
    refused(tmp_path, text, "NaN is not a loss")
    data["losses"][0] = -1.0
    refused(tmp_path, data, r"'losses'\[0\] must be a finite loss")


def test_a_format_1_profile_loads_without_a_digest_but_with_every_other_check(tmp_path, data):
    data.pop("digest")
    data["format"] = 1
    assert Profile.load(write(tmp_path, data)).n == 100
    data["sigma"] *= 2
    refused(tmp_path, data, "sigma is")


def test_a_profile_with_a_diverged_image_stores_null_and_round_trips(tmp_path, data):
    profile = Profile.load(SHIPPED)
    cal = list(profile.calibrated_losses)
    losses = list(profile.losses)
    ref = list(profile.ref_losses)
    losses[0] = cal[0] = None  # a diverged image: no loss, and left out of the statistics
    valid = np.array([c for c in cal if c is not None])
    import dataclasses
    diverged = dataclasses.replace(profile, losses=losses, ref_losses=ref, calibrated_losses=cal,
                                   n=len(valid), mu=float(valid.mean()),
                                   sigma=float(valid.std(ddof=1)), digest="")
    path = diverged.save(tmp_path / "diverged.json")
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["calibrated_losses"][0] is None
    again = Profile.load(path)
    assert again.n == 99 and math.isclose(again.mu, diverged.mu)


def test_save_refuses_to_write_what_load_would_refuse(tmp_path):
    import dataclasses

    profile = Profile.load(SHIPPED)
    bad = dataclasses.replace(profile, mu=profile.mu * 3)
    with pytest.raises(ProfileError, match="mu is"):
        bad.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file either
