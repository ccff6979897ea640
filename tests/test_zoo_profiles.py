"""Every belonging profile shipped with the zoo matches the weights it was built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ronan_jax import zoo
from ronan_jax.attribution.presets import PRESETS, get_preset
from ronan_jax.attribution.profile import Profile

PROFILES = sorted((Path(zoo.__file__).parent / "profiles").glob("*.json"))


def test_the_demo_profiles_ship():
    names = {p.name for p in PROFILES}
    assert {"dcgan-mnist-demo.json", "dcgan-mnist-fast.json"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profile_loads_and_matches_its_models_parameter_hash(path):
    prof = Profile.load(path)
    model = zoo.load(prof.model["name"])
    assert prof.model["param_hash"] == model.param_hash
    assert prof.reference is not None
    ref_name = zoo.default_reference(prof.model["name"])
    assert prof.reference["name"] == ref_name
    assert prof.reference["param_hash"] == zoo.load(ref_name).param_hash
    cal = np.asarray(prof.calibrated_losses)
    np.testing.assert_allclose(cal, np.asarray(prof.losses) / np.asarray(prof.ref_losses), rtol=1e-6)
    kept = np.delete(cal, prof.trimmed)
    assert prof.mu == pytest.approx(kept.mean()) and prof.sigma == pytest.approx(kept.std(ddof=1))
    preset = next((p for p in PRESETS if p != "paper" and path.stem.endswith(f"-{p}")), None)
    if preset is not None:  # a warm preset: warm starts from the shipped encoders
        assert prof.config == get_preset(preset).config().result_settings()
        chosen = get_preset(preset)
        failed = (prof.second_chance or {}).get("failed")
        assert (failed is not None) == chosen.trim_failed  # trimmed by the preset's rule only
        if not chosen.trim_outliers:
            assert prof.trimmed == (failed or [])
        assert prof.model["encoder_hash"] == model.encoder.param_hash
        assert prof.reference["encoder_hash"] == zoo.load(ref_name).encoder.param_hash
        return
    assert prof.n == 100 and prof.config["restarts"] == 8 and prof.config["lr"] == 0.1
    assert not prof.trimmed
    if not path.stem.endswith("-demo"):
        assert prof.config["steps"] == 1500  # the paper's defaults for the full profiles
