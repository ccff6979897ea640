"""The second chance (issue 19): a second inversion on the model for every image whose first
pass looks failed, by one rule and one constant for a profile's images and audited ones.

Tiny models and few steps (the tiny world of :mod:`e2e_helpers`); second passes use the
world's restarts where they can, so they share its compiled program.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from e2e_helpers import RESTARTS, SAMPLES, STEPS, db_rows, invoke, write_mixed_folder

from ronan_jax.attribution import second_chance
from ronan_jax.attribution.attribute import attribute
from ronan_jax.attribution.build import build_profile
from ronan_jax.attribution.calibrate import calibrated_losses
from ronan_jax.attribution.profile import (
    PROFILE_FORMAT,
    SECOND_CHANCE_FORMAT,
    Profile,
    ProfileError,
    ProfileMismatchError,
    belonging_stats,
    normality,
    normality_note,
    quantize_8bit,
)
from ronan_jax.audit.plan import AuditPlanError, settings_from_profile
from ronan_jax.engine.config import InversionConfig, second_pass_seed
from ronan_jax.engine.invert import invert
from ronan_jax.models.checkpoint import load_generator

K = 1.0  # on the tiny untrained models every loss is alike: flag those above the median
SC = InversionConfig(steps=STEPS, restarts=RESTARTS, second_chance=K, second_restarts=RESTARTS,
                     second_halving=())


@pytest.fixture(scope="module")
def models(world):
    return load_generator(world.model), load_generator(world.reference)


@pytest.fixture(scope="module")
def sc_profile(models, tmp_path_factory) -> tuple[Profile, Path]:
    model, ref = models
    out = tmp_path_factory.mktemp("sc") / "sc.json"
    prof = build_profile(model, ref, n=SAMPLES, seed=0, config=SC,
                         resume_path=out.with_suffix(".progress.jsonl"))
    prof.save(out)
    return prof, out


def profile_images(model, n: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """The images build_profile draws (8-bit, seed 0)."""
    return quantize_8bit(np.asarray(model.generate(jax.random.key(seed), n)))


def test_settings_off_compare_equal_and_second_pass_is_a_new_search():
    off = InversionConfig(second_restarts=16, second_steps=7)  # ignored while off
    assert off.result_settings() == InversionConfig().result_settings()
    assert "second_chance" not in off.result_settings()
    on = InversionConfig(seed=3, second_chance=5.0)
    assert on.result_settings()["second_steps"] == 1500  # 0 recorded as the steps it means
    assert on.result_settings()["second_halving"] == [0.1, 0.25, 0.5]
    assert InversionConfig.from_dict(on.result_settings()) == on.replace(second_steps=1500)
    second = on.second_pass()
    assert (second.restarts, second.steps, second.second_chance) == (32, 1500, 0.0)
    assert second.halving_at == (0.1, 0.25, 0.5) and not on.halving_at
    assert second.seed == second_pass_seed(3) != 3 and second_pass_seed(3) == second_pass_seed(3)
    with pytest.raises(ValueError):
        InversionConfig(second_chance=-1.0)


def test_rule_on_values():
    assert second_chance.flag_level([1.0, 2.0, 3.0, None, float("nan")], 5.0) == 10.0
    flags = second_chance.flagged(np.array([1.0, 1.0, np.nan, 1.0]),
                                  np.array([9.0, 11.0, np.nan, np.nan]), 10.0)
    # above the level; a diverged model inversion; not: below, or only the reference diverged
    assert flags.tolist() == [False, True, True, False]
    assert second_chance.min_loss(np.array([3.0, np.nan, 1.0]),
                                  np.array([2.0, 4.0, np.nan])).tolist() == [2.0, 4.0, 1.0]


def test_the_rule_flags_the_same_profile_images_on_every_run(models, sc_profile):
    model, ref = models
    prof, _ = sc_profile
    again = build_profile(model, ref, n=SAMPLES, seed=0, config=SC)
    rec = prof.second_chance
    assert rec["images"] and len(rec["images"]) < SAMPLES
    assert again.second_chance == rec and again.losses == prof.losses
    first = np.array(rec["first_losses"]) / np.array(prof.ref_losses)
    assert rec["level"] == pytest.approx(K * np.median(first), rel=1e-12)
    assert rec["images"] == [int(i) for i in np.flatnonzero(first > rec["level"])]
    for i, (final, before) in enumerate(zip(prof.losses, rec["first_losses"], strict=True)):
        assert final <= before if i in rec["images"] else final == before


def test_profile_and_audit_apply_identical_constants(models, sc_profile):
    """Audited again, the profile's own images are flagged exactly as the build flagged them,
    against the profile's stored level, and get the profile's losses."""
    model, ref = models
    prof, path = sc_profile
    loaded = Profile.load(path)
    assert loaded.format == SECOND_CHANCE_FORMAT and loaded.second_chance_level == prof.second_chance_level
    att = attribute(profile_images(model), model, ref, loaded)
    assert np.flatnonzero(att.second_pass).tolist() == prof.second_chance["images"]
    np.testing.assert_allclose(att.first_loss, prof.second_chance["first_losses"], rtol=1e-6)
    np.testing.assert_allclose(att.loss, prof.losses, rtol=1e-6)
    assert att.second_result is not None and len(att.second_result.loss) == att.second_pass.sum()


def test_a_failed_inversion_recovers_with_the_second_chance(models):
    """One restart of 3 steps misses belonging images (losses well above a converged
    inversion's, measured by an independent run); the second pass (4 new restarts of 150
    steps) reaches the converged level, and each image keeps the lower loss, that pass's."""
    model, ref = models
    images = profile_images(model, 4, seed=11)
    cfg = InversionConfig(steps=3, restarts=1, second_chance=5.0, second_restarts=4,
                          second_steps=150, second_halving=())
    first = calibrated_losses(model, ref, images, cfg)  # no level: first pass only
    assert first.second_pass is None
    got = calibrated_losses(model, ref, images, cfg, second_chance_level=0.0)  # flag them all
    assert got.second_pass.all()
    np.testing.assert_array_equal(got.first_loss, first.loss)
    alone = invert(model, images, cfg.second_pass())
    np.testing.assert_array_equal(got.loss, np.minimum(first.loss, alone.loss))
    converged = invert(model, images, InversionConfig(steps=150, restarts=4, seed=99)).loss
    assert np.all(first.loss > 1.5 * converged), (first.loss, converged)  # failed
    assert np.all(got.loss < 1.1 * converged), (got.loss, converged)  # recovered
    np.testing.assert_allclose(got.calibrated, got.loss / got.ref_loss, rtol=1e-6)


def test_decision_stop_with_the_second_chance_uncalibrated_keeps_the_verdicts(models):
    """Uncalibrated, decision_stop's bound is the threshold itself (a scalar); the second
    pass of the flagged images stops by it too, and the verdicts are the full run's."""
    model, _ = models
    prof = build_profile(model, None, n=SAMPLES, seed=0, config=SC)
    images = profile_images(model, SAMPLES, seed=5)
    full = attribute(images, model, None, prof, SC)
    stopped = attribute(images, model, None, prof, SC, decision_stop=True)
    assert full.second_pass.any()
    np.testing.assert_array_equal(stopped.verdict, full.verdict)
    assert stopped.second_pass.any()


def test_profile_without_the_rule_refuses_an_audit_with_it_and_the_reverse(models, engine,
                                                                          sc_profile):
    model, ref = models
    _, _, plain, plain_cfg = engine
    images = profile_images(model, 2)
    with pytest.raises(ProfileMismatchError, match="second_chance"):
        attribute(images, model, ref, plain, plain_cfg.replace(second_chance=5.0))
    prof, _ = sc_profile
    with pytest.raises(ProfileMismatchError, match="second_chance"):
        attribute(images, model, ref, prof, InversionConfig(steps=STEPS, restarts=RESTARTS))
    with pytest.raises(AuditPlanError, match="second_chance"):
        settings_from_profile(plain, model, ref, {"second_chance": 5.0})
    with pytest.raises(AuditPlanError, match="second_restarts"):
        settings_from_profile(prof, model, ref, {"second_restarts": 3})


def test_profile_formats_and_edits(world, sc_profile, tmp_path):
    plain = json.loads(Path(world.profile).read_text())
    assert plain["format"] == PROFILE_FORMAT and "second_chance" not in plain
    _, path = sc_profile
    data = json.loads(path.read_text())
    edits = {
        "level": lambda d: d["second_chance"].update(level=d["second_chance"]["level"] * 2),
        "images": lambda d: d["second_chance"].update(images=[]),
        "k": lambda d: d["second_chance"].update(k=2.0),
        "format": lambda d: d.update(format=PROFILE_FORMAT),
        "first_losses": lambda d: d["second_chance"]["first_losses"].__setitem__(0, 1.0),
    }
    for name, edit in edits.items():
        bad = json.loads(json.dumps(data))
        edit(bad)
        target = tmp_path / f"{name}.json"
        target.write_text(json.dumps(bad))
        with pytest.raises(ProfileError):
            Profile.load(target)


def test_still_failed_and_the_statistics_that_leave_them_out_on_values():
    loss = np.array([1.0, 1.0, 1.0, 1.0, np.nan])
    cal = np.array([0.1, 0.2, 0.3, 9.0, np.nan])
    assert second_chance.still_failed(loss, cal, 5.0) == [3, 4]  # above the level, diverged
    mu, sigma, n, trimmed = belonging_stats(cal, 0.05, False, failed=[3, 4])
    assert (mu, n, trimmed) == (pytest.approx(0.2), 3, [3])  # the diverged one never counted
    assert sigma == pytest.approx(0.1)


def test_failed_level_cuts_a_failure_but_not_a_skewed_sound_tail():
    """The failed-twice bound: a tight profile's failure (40x its median) is above it, and a
    log-normal profile's whole sound tail (sigma 1.7 in log space, as the photo model's; its
    largest ~50x the median) is below it, although that tail is far above the level k x median."""
    rng = np.random.default_rng(0)
    tight = np.exp(rng.normal(np.log(0.1), 0.3, 100))
    tight[7] = 40 * np.median(tight)
    level = second_chance.flag_level(tight, 5.0)
    bound = second_chance.failed_level(tight, level)
    assert bound == pytest.approx(max(level, np.median(tight) * np.exp(4 * 1.4826 * np.median(
        np.abs(np.log(tight) - np.median(np.log(tight)))))))
    assert second_chance.still_failed(np.ones(100), tight, bound) == [7]
    skewed = np.exp(rng.normal(np.log(0.01), 1.7, 100))
    level = second_chance.flag_level(skewed, 5.0)
    bound = second_chance.failed_level(skewed, level)
    assert (skewed > level).sum() >= 10 and bound > skewed.max()
    assert second_chance.still_failed(np.ones(100), skewed, bound) == []
    assert second_chance.failed_level(np.full(10, 0.2), 1.0) == 1.0  # no spread: the level
    with pytest.raises(ValueError, match="positive finite"):
        second_chance.failed_level([np.nan, None, 0.0], 1.0)


def test_trim_failed_leaves_out_only_images_that_failed_twice(models, sc_profile, tmp_path):
    """Built again from the same measured losses (the resume file: nothing is inverted), a
    trim_failed profile leaves out exactly the images still above both its level and its
    spread bound after their second pass, records them with the bound's constants, and keeps
    every loss; its file refuses an edited record. At the default width nothing of this
    profile is that far out; at a near-zero width the bound is the level (K = 1: the median)."""
    model, ref = models
    prof, path = sc_profile
    resume = path.with_suffix(".progress.jsonl")
    cal = np.asarray(prof.calibrated_losses, np.float64)
    first = np.asarray(prof.second_chance["first_losses"], np.float64) / np.asarray(prof.ref_losses)
    default = build_profile(model, ref, n=SAMPLES, seed=0, config=SC, trim_failed=True,
                            resume_path=resume)
    bound = second_chance.failed_level(first, prof.second_chance_level)
    assert default.second_chance["failed_level"] == pytest.approx(bound)
    assert default.second_chance["failed"] == [int(i) for i in np.flatnonzero(cal > bound)]
    trimmed = build_profile(model, ref, n=SAMPLES, seed=0, config=SC, trim_failed=True,
                            failed_mads=1e-6, resume_path=resume)
    assert trimmed.losses == prof.losses and trimmed.second_chance["images"] == prof.second_chance["images"]
    assert trimmed.second_chance["failed_level"] == pytest.approx(prof.second_chance_level)
    above = [int(i) for i in np.flatnonzero(cal > prof.second_chance_level)]
    assert above and len(above) < SAMPLES  # K = 1: the median level leaves some above it
    assert trimmed.second_chance["failed"] == above == trimmed.trimmed
    kept = np.delete(cal, above)
    assert trimmed.n == kept.size and trimmed.mu == pytest.approx(kept.mean())
    assert trimmed.sigma == pytest.approx(kept.std(ddof=1)) and trimmed.threshold < prof.threshold
    out = tmp_path / "trimmed.json"
    trimmed.save(out)
    assert Profile.load(out).second_chance["failed"] == above
    data = json.loads(out.read_text())
    for name, edit in (("failed", lambda r: r.update(failed=above[:-1])),
                       ("mads", lambda r: r.update(failed_mads=4.0)),
                       ("level", lambda r: r.update(failed_level=r["failed_level"] * 2))):
        bad = json.loads(json.dumps(data))
        edit(bad["second_chance"])
        (tmp_path / f"edited-{name}.json").write_text(json.dumps(bad))
        with pytest.raises(ProfileError, match="second_chance failed"):  # before the digest
            Profile.load(tmp_path / f"edited-{name}.json")
    with pytest.raises(ValueError, match="needs the second chance"):
        build_profile(model, ref, n=SAMPLES, seed=0, config=SC.replace(second_chance=0.0),
                      trim_failed=True)


def test_normality_note_on_values():
    rng = np.random.default_rng(0)
    w, p = normality(rng.normal(1.0, 0.1, 100))
    assert w > 0.97 and p > 0.01 and normality_note(rng.normal(1.0, 0.1, 100)) is None
    skewed = [*rng.normal(0.1, 0.01, 99), 3.7]  # one failed inversion
    w, p = normality(skewed)
    assert w < 0.3 and p < 1e-10
    assert "far from normal" in normality_note(skewed)
    assert normality([1.0, 1.0, 1.0, None]) is None


def test_cli_profile_and_audit_with_the_second_chance(world, tmp_path):
    out = tmp_path / "sc.json"
    args = ["profile", "--model", world.model, "--reference", world.reference, "--samples",
            SAMPLES, "--steps", STEPS, "--restarts", RESTARTS, "--seed", 0, "-o", out,
            "--quiet", "--second-chance", str(K), "--second-restarts", RESTARTS]
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert "given a second pass above calibrated loss" in res.output
    prof = Profile.load(out)
    assert prof.config["second_chance"] == K and prof.second_chance["images"]
    res = invoke(args)  # a rerun reuses every measured loss, both passes
    assert res.exit_code == 0 and Profile.load(out).losses == prof.losses
    folder = write_mixed_folder(world, tmp_path / "images", n=4)
    db = tmp_path / "a.sqlite"
    res = invoke(["audit", folder, "--model", world.model, "--reference", world.reference,
                  "--profile", out, "--db", db, "--quiet"])
    assert res.exit_code == 0, res.output
    rows = db_rows(db)
    assert len(rows) == 8 and all(r["second_pass"] in (0, 1) for r in rows)
    rerun = [r for r in rows if r["second_pass"]]
    assert rerun and all(r["first_loss"] >= r["loss"] for r in rerun)
    assert all(r["first_loss"] is None for r in rows if not r["second_pass"])
    refused = [  # the reverse of each profile's rule: exit 2, nothing stored
        ["--profile", out, "--second-chance", "0"],
        ["--profile", world.profile, "--second-chance"],
    ]
    for extra in refused:
        res = invoke(["audit", folder, "--model", world.model, "--reference", world.reference,
                      "--db", tmp_path / "refused.sqlite", "--quiet", *extra])
        assert res.exit_code == 2 and "second_chance" in res.output, res.output
    assert not (tmp_path / "refused.sqlite").exists()
    res = invoke([*args[:-4], "--trim-failed"])  # without --second-chance: a usage error
    assert res.exit_code == 2 and "needs --second-chance" in res.output, res.output
