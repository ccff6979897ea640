"""Warm-started inversion: the encoder's run is added to the restarts, recorded in profiles
and refused on mismatch; encoders are stored in checkpoints and trained resumably."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e2e_helpers import invoke, save_tiny_dcgan

from ronan_jax.attribution.profile import Profile, ProfileMismatchError, check_compatible
from ronan_jax.attribution.warm_start import WarmStartError, check_warm_start, describe_warm_start
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Encoder, Generator
from ronan_jax.engine.invert import invert
from ronan_jax.models import encoder as encoder_model
from ronan_jax.models.checkpoint import CheckpointError, load_generator, read_card, save_encoder
from ronan_jax.models.encoder_training import STATE_DIR, EncoderTraining, train_encoder

CFG = InversionConfig(steps=20, restarts=2, loop="chunked", unroll=10)
SMALL = {"widths": (8, 16, 16), "hidden": 32}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dcgan(tmp_path_factory.mktemp("warm") / "tiny", seed=3, name="tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Generator:
    return load_generator(tiny_dir)


@pytest.fixture(scope="module")
def random_encoder(tiny: Generator) -> Encoder:
    cfg = encoder_model.EncoderConfig(tiny.output_shape, tiny.input_shape, **SMALL)
    return encoder_model.make_encoder(cfg, encoder_model.init_variables(cfg, jax.random.key(5)))


@pytest.fixture(scope="module")
def images(tiny: Generator) -> np.ndarray:
    own = np.asarray(tiny.generate(jax.random.key(11), 3))
    noise = np.random.default_rng(2).random((3, *tiny.output_shape)).astype(np.float32)
    return np.concatenate([own, noise])


def test_the_warm_run_is_added_and_the_restarts_start_where_they_would_cold(tiny, random_encoder, images):
    warm_gen = tiny.replace(encoder=random_encoder)
    cold = invert(tiny, images, CFG)
    warm = invert(warm_gen, images, CFG.replace(warm_start=True))
    assert warm.restart_best.shape == (6, 3) and cold.restart_best.shape == (6, 2)
    # Columns 1.. are the cold restarts (same PRNG draws); only the table size differs.
    np.testing.assert_allclose(warm.restart_best[:, 1:], cold.restart_best, rtol=1e-5)
    assert warm.steps_run.sum() == 6 * 3 * CFG.steps
    # So the warm loss is min(cold loss, a one-restart warm run's): what the accuracy
    # benchmark composes the SPEC-default warm rows from (benchmarks/accuracy/warm_spec.py).
    one = invert(warm_gen, images, CFG.replace(warm_start=True, restarts=1))
    np.testing.assert_allclose(one.restart_best[:, 0], warm.restart_best[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.fmin(cold.loss, one.loss), warm.loss, rtol=1e-5)


def test_at_equal_steps_and_restarts_the_warm_loss_is_never_above_the_cold_one(tiny, random_encoder, images):
    warm_gen = tiny.replace(encoder=random_encoder)
    for steps in (1, 20):
        cold = invert(tiny, images, CFG.replace(steps=steps))
        warm = invert(warm_gen, images, CFG.replace(steps=steps, warm_start=True))
        assert np.all(warm.loss <= cold.loss * (1 + 1e-5))


def test_a_perfect_encoder_starts_at_the_answer(images):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 16 * 16)).astype(np.float32) / 4

    def apply(params, z, condition):
        return jax.nn.sigmoid(z @ params["w"]).reshape(z.shape[0], 16, 16, 1)

    def encode(params, x, condition):  # the exact inverse of apply, for images it made
        logits = jnp.log(x.reshape(x.shape[0], -1)) - jnp.log1p(-x.reshape(x.shape[0], -1))
        return logits @ params["pinv"]

    gen = Generator("linear", apply, {"w": jnp.asarray(w)}, (8,), (16, 16, 1))
    gen = gen.replace(encoder=Encoder(encode, {"pinv": jnp.asarray(np.linalg.pinv(w))}))
    made = np.asarray(gen(jax.random.normal(jax.random.key(1), (4, 8))))
    cold = invert(gen, made, CFG.replace(steps=1))
    warm = invert(gen, made, CFG.replace(steps=1, warm_start=True))
    assert np.all(warm.loss < 1e-9)
    assert np.all(cold.loss > 1e-4)
    np.testing.assert_array_equal(np.argmin(warm.restart_best, axis=1), 0)


def test_a_model_without_an_encoder_runs_cold_under_warm_start(tiny, images):
    cold = invert(tiny, images, CFG)
    warm = invert(tiny, images, CFG.replace(warm_start=True))
    np.testing.assert_array_equal(warm.loss, cold.loss)
    assert warm.restart_best.shape == cold.restart_best.shape


def test_warm_start_is_a_result_setting_and_the_second_pass_starts_cold():
    assert "warm_start" not in CFG.result_settings()
    warm = CFG.replace(warm_start=True, second_chance=5.0)
    assert warm.result_settings()["warm_start"] is True
    assert warm.second_pass().warm_start is False
    assert InversionConfig.from_dict(warm.to_dict()) == warm


def _profile(config: InversionConfig, model: Generator, reference: Generator | None) -> Profile:
    losses = [1.0, 1.1, 0.9]
    return Profile(
        model=model.identity, reference=None if reference is None else reference.identity,
        config=config.result_settings(), calibrated=reference is not None, n=3, mu=1.0,
        sigma=0.1, alpha=0.05, seed=0, losses=losses, ref_losses=None,
        calibrated_losses=losses, image_shape=list(model.output_shape), versions={},
        created="2026-12-02",
    )


def test_a_profile_built_warm_refuses_a_cold_audit_and_another_encoder(tiny, random_encoder):
    warm_gen = tiny.replace(encoder=random_encoder)
    warm_cfg = CFG.replace(warm_start=True)
    prof = _profile(warm_cfg, warm_gen, None)
    check_compatible(prof, warm_gen, None, warm_cfg)
    with pytest.raises(ProfileMismatchError, match="warm_start: profile True, audit None"):
        check_compatible(prof, warm_gen, None, CFG)
    cfg2 = encoder_model.EncoderConfig(tiny.output_shape, tiny.input_shape, **SMALL)
    other = tiny.replace(encoder=encoder_model.make_encoder(cfg2, encoder_model.init_variables(cfg2, jax.random.key(6))))
    with pytest.raises(ProfileMismatchError, match="model encoder differs"):
        check_compatible(prof, other, None, warm_cfg)
    with pytest.raises(ProfileMismatchError, match=r"model encoder differs .profile [0-9a-f]{12}, audit none"):
        check_compatible(prof, tiny, None, warm_cfg)
    # A cold profile ignores encoders: the same weights give the same cold results.
    check_compatible(_profile(CFG, tiny, None), warm_gen, None, CFG)


def test_a_warm_start_with_no_encoder_anywhere_is_refused_and_described(tiny, random_encoder):
    with pytest.raises(WarmStartError, match="train one with `ronan encoder train"):
        check_warm_start(tiny, tiny, CFG.replace(warm_start=True))
    warm_gen = tiny.replace(encoder=random_encoder)
    assert describe_warm_start(warm_gen, tiny, CFG.replace(warm_start=True)) == (
        "warm start (model encoder; reference cold, no encoder)")
    assert describe_warm_start(warm_gen, warm_gen, CFG.replace(warm_start=True)) == (
        "warm start (model and reference encoders)")
    assert describe_warm_start(warm_gen, warm_gen, CFG) == ""


def test_an_encoder_is_stored_in_the_checkpoint_and_verified(tmp_path, random_encoder):
    path = save_tiny_dcgan(tmp_path / "m", seed=4, name="m")
    before = read_card(path)["param_hash"]
    cfg = encoder_model.EncoderConfig.from_dict(random_encoder.info["config"])
    entry = save_encoder(path, cfg, random_encoder.params)
    gen = load_generator(path)
    assert gen.param_hash == before
    assert gen.identity["encoder_hash"] == entry["param_hash"] == random_encoder.param_hash
    with pytest.raises(CheckpointError, match="already has an encoder"):
        save_encoder(path, cfg, random_encoder.params)
    card = json.loads((path / "model_card.json").read_text())
    card["encoder"]["param_hash"] = "0" * 64
    (path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="encoder was changed or damaged"):
        load_generator(path)


def test_a_resizable_generators_encoder_follows_it_to_other_sizes_and_channels():
    from ronan_jax.models import conv_decoder

    dcfg = conv_decoder.ConvDecoderConfig(latent_channels=2, nc=3, widths=(8, 8, 4), n_res=0)
    gen = conv_decoder.make_generator(dcfg, conv_decoder.init_variables(dcfg, jax.random.key(0)))
    ecfg = encoder_model.default_config(gen.output_shape, gen.input_shape)
    assert ecfg.spatial
    gen = gen.replace(encoder=encoder_model.make_encoder(ecfg, encoder_model.init_variables(ecfg, jax.random.key(1))))
    grey = gen.for_shape((8, 12, 1))
    assert grey.encoder is not None and grey.input_shape == (2, 3, 2)
    z = grey.encoder(jnp.zeros((2, 8, 12, 1)))
    assert z.shape == (2, 2, 3, 2)
    res = invert(grey, np.full((2, 8, 12, 1), 0.5, np.float32), CFG.replace(steps=2, warm_start=True))
    assert res.restart_best.shape == (2, 3)


def test_encoder_training_resumes_after_a_stop_and_ends_as_an_uninterrupted_run(tmp_path):
    settings = EncoderTraining(steps=20, batch=8, save_every=10)
    cfg = encoder_model.EncoderConfig((16, 16, 1), (8,), **SMALL)
    whole = save_tiny_dcgan(tmp_path / "whole", seed=7, name="t")
    stopped = save_tiny_dcgan(tmp_path / "stopped", seed=7, name="t")
    done = train_encoder(whole, settings, config=cfg)
    assert done.resumed_from == 0 and not (whole / STATE_DIR).exists()

    def stop(step, total, losses):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_encoder(stopped, settings, config=cfg, progress=stop)
    assert (stopped / STATE_DIR / "state.npz").is_file()
    resumed = train_encoder(stopped, settings, config=cfg)
    assert resumed.resumed_from == 10
    assert resumed.entry["param_hash"] == done.entry["param_hash"]
    assert load_generator(stopped).encoder.param_hash == done.entry["param_hash"]


def test_a_trained_encoder_lowers_the_loss_of_the_models_own_images(tmp_path):
    path = save_tiny_dcgan(tmp_path / "m", seed=8, name="m")
    train_encoder(path, EncoderTraining(steps=200, batch=32),
                  config=encoder_model.EncoderConfig((16, 16, 1), (8,), **SMALL))
    gen = load_generator(path)
    own = np.asarray(gen.generate(jax.random.key(99), 8))
    cold = invert(gen, own, CFG.replace(steps=5, restarts=1))
    warm = invert(gen, own, CFG.replace(steps=5, restarts=1, warm_start=True))
    # The encoder's run is the better start for most images, by a wide margin.
    assert np.sum(warm.restart_best[:, 0] < cold.restart_best[:, 0]) >= 6
    assert np.median(warm.loss) < 0.5 * np.median(cold.loss)


def test_ronan_encoder_train_from_the_command_line_refuses_a_shipped_encoder_without_force(tmp_path):
    path = save_tiny_dcgan(tmp_path / "cli", seed=9, name="cli")
    first = invoke(["encoder", "train", "--model", path, "--steps", "20", "--batch", "8"])
    assert first.exit_code == 0, first.output
    assert "Encoder " in first.output and "written into" in first.output
    hash1 = read_card(path)["encoder"]["param_hash"]
    again = invoke(["encoder", "train", "--model", path, "--steps", "20", "--batch", "8"])
    assert again.exit_code == 2
    assert "already ships an encoder" in again.output and "--force" in again.output
    forced = invoke(["encoder", "train", "--model", path, "--steps", "20", "--batch", "8", "--seed", "1", "--force"])
    assert forced.exit_code == 0, forced.output
    assert read_card(path)["encoder"]["param_hash"] != hash1


def test_a_warm_profile_audits_warm_and_refuses_a_cold_audit_from_the_command_line(tmp_path):
    model = save_tiny_dcgan(tmp_path / "model", seed=12, name="model")
    ref = save_tiny_dcgan(tmp_path / "ref", seed=13, name="ref")
    train_encoder(model, EncoderTraining(steps=50, batch=8), config=encoder_model.EncoderConfig((16, 16, 1), (8,), **SMALL))
    common = ["--samples", "4", "--steps", "5", "--restarts", "1", "--batch-size", "4"]
    no_encoder = invoke(["profile", "--model", ref, "--reference", model, *common, "--warm-start",
                         "-o", tmp_path / "x.json", "--quiet"])
    assert no_encoder.exit_code == 0, no_encoder.output  # the reference's encoder warms it
    cold_everywhere = invoke(["profile", "--model", ref, "--reference", ref, *common, "--warm-start",
                              "-o", tmp_path / "y.json", "--quiet"])
    assert cold_everywhere.exit_code == 2 and "needs an encoder" in cold_everywhere.output
    built = invoke(["profile", "--model", model, "--reference", ref, *common, "--warm-start",
                    "-o", tmp_path / "p.json"])
    assert built.exit_code == 0, built.output
    assert "warm start (model encoder; reference cold, no encoder)" in built.output
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["config"]["warm_start"] is True and "encoder_hash" in prof["model"]
    fast_args = ["profile", "--model", model, "--reference", ref, "--preset", "fast", *common,
                 "--second-restarts", "1", "--second-steps", "5", "--quiet"]
    for extra, trims in (([], True), (["--no-trim-failed"], False)):
        fast = invoke([*fast_args, *extra, "-o", tmp_path / f"fast{trims}.json"])
        assert fast.exit_code == 0, fast.output
        got = json.loads((tmp_path / f"fast{trims}.json").read_text())
        assert got["config"]["second_chance"] == 5.0 and got["config"]["warm_start"] is True
        assert ("failed" in got["second_chance"]) == trims  # the preset's rule, or not
        assert got["trimmed"] == (got["second_chance"].get("failed") or [])
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image
    gen = load_generator(model)
    for i, img in enumerate(np.asarray(gen.generate(jax.random.key(3), 2))):
        Image.fromarray(np.round(img[..., 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    audit = invoke(["audit", folder, "--model", model, "--profile", tmp_path / "p.json",
                    "--db", tmp_path / "r.sqlite", "--quiet"])
    assert audit.exit_code == 0, audit.output
    cold = invoke(["audit", folder, "--model", model, "--profile", tmp_path / "p.json",
                   "--db", tmp_path / "c.sqlite", "--cold-start", "--quiet"])
    assert cold.exit_code == 2 and "warm_start: profile True, audit None" in cold.output


def test_the_cli_presets_are_the_engines_and_paper_is_the_spec_default():
    from ronan_jax.attribution.presets import PRESETS, get_preset
    from ronan_jax.cli.app import PRESET_NAMES

    assert PRESET_NAMES == tuple(PRESETS)
    paper = get_preset("paper").config()
    assert (paper.steps, paper.restarts, paper.warm_start) == (1500, 8, False)
    assert paper == InversionConfig() and not get_preset("paper").trim_outliers
    fast = get_preset("fast").config(seed=3)
    assert fast.warm_start and fast.seed == 3
    assert (fast.steps, fast.restarts, fast.second_pass().steps) == (1500, 1, 300)
    express = get_preset("express").config()
    assert (express.steps, express.restarts, express.second_pass().steps) == (300, 2, 300)
    for name, cfg in (("fast", fast), ("express", express)):
        # the second chance for every image; only the profile images that fail it twice trimmed
        assert cfg.second_chance == 5.0 and get_preset(name).trim_failed
        assert cfg.warm_start and not get_preset(name).trim_outliers
    assert (express.steps * express.runs_per_image(True) < fast.steps * fast.runs_per_image(True)
            < paper.steps * paper.restarts)
    with pytest.raises(ValueError, match="unknown preset 'slow'"):
        get_preset("slow")


def test_the_fast_preset_needs_the_models_encoder_and_audit_preset_needs_a_shipped_profile(tmp_path, monkeypatch):
    from ronan_jax.audit.plan import AuditPlanError, profile_path_for
    from ronan_jax.models import resolver

    model = save_tiny_dcgan(tmp_path / "plain", seed=14, name="plain")
    out = invoke(["profile", "--model", model, "--reference", model, "--preset", "fast",
                  "--samples", "3", "-o", tmp_path / "p.json", "--quiet"])
    assert out.exit_code == 2 and "has none; train one with `ronan encoder train" in out.output
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "vae-mnist.json").write_text("{}")
    monkeypatch.setattr(resolver, "_PROFILES_DIR", tmp_path / "profiles")
    assert profile_path_for("builtin:vae-mnist", None) == tmp_path / "profiles" / "vae-mnist.json"
    with pytest.raises(AuditPlanError, match=r"no fast-preset profile is shipped for builtin:vae-mnist.*--preset fast"):
        profile_path_for("builtin:vae-mnist", None, "fast")
    (tmp_path / "profiles" / "vae-mnist-fast.json").write_text("{}")
    assert profile_path_for("builtin:vae-mnist", None, "fast").name == "vae-mnist-fast.json"
    both = invoke(["audit", tmp_path, "--model", model, "--profile", tmp_path / "x.json",
                   "--preset", "fast", "--db", tmp_path / "r.sqlite", "--quiet"])
    assert both.exit_code == 2 and "--preset picks a shipped profile" in both.output


def test_an_encoder_tree_that_is_not_the_cards_is_a_one_line_error(tmp_path, random_encoder):
    path = save_tiny_dcgan(tmp_path / "m", seed=4, name="m")
    cfg = encoder_model.EncoderConfig.from_dict(random_encoder.info["config"])
    save_encoder(path, cfg, random_encoder.params)
    card = json.loads((path / "model_card.json").read_text())
    card["encoder"]["config"]["widths"] = [8]  # the stored tree has three blocks
    (path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="cannot restore the encoder") as err:
        load_generator(path)
    assert "\n" not in str(err.value)
