"""The accuracy benchmark's pieces: AUC, the loss cache, the image sets, scoring a row."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks.accuracy import cache, sets, tables, workers
from ronan_jax.engine.config import InversionConfig

TINY = InversionConfig(steps=6, restarts=2)


@pytest.fixture(autouse=True)
def tmp_images(tmp_path, monkeypatch):
    """Generated sets go to a temporary folder, not the committed one."""
    monkeypatch.setattr(sets, "IMAGES_DIR", tmp_path / "images")
    return tmp_path / "images"


def test_auc_counts_pairs_and_ties_and_puts_nan_last():
    assert tables.auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert tables.auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert tables.auc(np.array([1.0, 3.0]), np.array([3.0, 0.0])) == pytest.approx(0.375)
    assert tables.auc(np.array([np.nan]), np.array([5.0])) == 0.0


def test_image_sha_depends_on_pixels_and_shape():
    a = np.zeros((4, 4, 1), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert cache.image_sha(a) == cache.image_sha(a.copy())
    assert cache.image_sha(a) != cache.image_sha(b)
    assert cache.image_sha(a) != cache.image_sha(np.zeros((2, 8, 1), np.uint8))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def test_cached_losses_are_reused_and_survive_a_cut_line(tmp_cache, monkeypatch):
    gen = sets.load_model("dcgan-mnist")
    images = sets.load_set("gen:dcgan-mnist:3", 3)
    loss, steps = cache.losses(gen, images, TINY, log=lambda m: None)
    assert loss.shape == (3,) and np.all(loss > 0)
    assert np.all(steps == TINY.steps * TINY.restarts)
    path = cache.cache_path(gen, TINY)
    recs = cache.read(path, cache.identity(gen.for_shape(images.shape[1:]), TINY))
    assert {r["device"] for r in recs.values()} == {jax.devices()[0].device_kind}
    path.write_text(path.read_text() + '{"sha": "cut')  # a write killed half-way

    def refuse(*a, **k):
        raise AssertionError("a cached image was inverted again")

    monkeypatch.setattr(cache, "invert", refuse)
    again, _ = cache.losses(gen, images[::-1], TINY, log=lambda m: None)
    np.testing.assert_array_equal(again, loss[::-1])


def test_cache_file_of_other_settings_is_refused(tmp_cache):
    gen = sets.load_model("dcgan-mnist")
    path = cache.cache_path(gen, TINY)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"identity": {"generator": "other"}}) + "\n")
    with pytest.raises(ValueError, match="another generator"):
        cache.losses(gen, sets.load_set("gen:dcgan-mnist:3", 1), TINY, log=lambda m: None)


def test_1977_filter_changes_pixels_and_keeps_greyscale():
    digits = sets.load_set("gen:dcgan-mnist:1", 4)
    out = sets.filter_1977(digits)
    assert out.shape == digits.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - digits.astype(int)).mean() > 5
    photos = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert sets.filter_1977(photos).shape == (2, 8, 8, 3)


def test_unknown_set_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown image set"):
        sets.load_set("pics:foo", 2)


def test_generated_set_is_deterministic_and_seed_dependent():
    a = sets.load_set("gen:dcgan-mnist:1", 2)
    np.testing.assert_array_equal(a, sets.load_set("gen:dcgan-mnist:1", 2))
    assert not np.array_equal(a, sets.load_set("gen:dcgan-mnist:2", 2))


@pytest.mark.slow  # the full-size zoo model x 10 classes: ~30 s of compiling
def test_conditional_sets_carry_classes_and_the_cache_keeps_them(tmp_cache):
    """A conditional model's set holds each image's drawn class (the profile's draw for
    seed 0); known-class losses are cached per (image, class); the minimum records every
    class's loss and the winner."""
    from ronan_jax.attribution.build import profile_classes

    gen = sets.load_model("cdcgan-mnist")
    images = sets.load_set("gen:cdcgan-mnist:0", 4)
    drawn = sets.load_classes("gen:cdcgan-mnist:0", 4)
    np.testing.assert_array_equal(drawn, profile_classes(gen, 4, 0))
    digits = sets.load_classes("data:mnist-unseen", 4)
    assert digits.dtype == np.int32 and set(digits) <= set(range(10))
    assert sets.load_classes("data:photo-heldout", 4) is None
    known, _ = cache.losses(gen, images, TINY, log=lambda m: None, classes=drawn)
    other, _ = cache.losses(gen, images, TINY, log=lambda m: None, classes=(drawn + 1) % 10)
    assert not np.array_equal(known, other)  # the class is part of the key and the loss
    winner, per_class = cache.class_records(gen, images, TINY, drawn)
    np.testing.assert_array_equal(winner, drawn)
    assert per_class is None
    unknown = TINY.replace(class_rule="min")
    best, steps = cache.losses(gen, images, unknown, log=lambda m: None)
    winner, per_class = cache.class_records(gen, images, unknown)
    assert per_class.shape == (4, 10)
    np.testing.assert_allclose(best, per_class.min(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(winner, per_class.argmin(axis=1))
    assert np.all(steps == 10 * TINY.steps * TINY.restarts)  # every class's work
    np.testing.assert_allclose(per_class[np.arange(4), drawn], known, rtol=1e-6)


@pytest.mark.slow  # the full-size zoo model x 10 classes: ~30 s of compiling
def test_a_screened_row_is_scored_from_the_screening_and_the_full_minimum(tmp_cache):
    base = tables.Row("c", "cdcgan-mnist", "gen:cdcgan-mnist:1", "data:mnist-unseen", "-",
                      calibrated=False, overrides=(("class_rule", "min"),))
    full = tables.score(base, TINY, n=4, log=lambda m: None)
    cut = tables.score(dataclasses.replace(base, screen=(3, 10)), TINY, n=4, log=lambda m: None)
    assert cut["calibrated"] == full["calibrated"]  # keeping all 10 classes is the minimum
    assert cut["steps_run"] == full["steps_run"] + 8 * 10 * 3 * TINY.restarts
    one = tables.score(dataclasses.replace(base, screen=(3, 1)), TINY, n=4, log=lambda m: None)
    assert one["steps_run"] == 8 * (10 * 3 + 1 * TINY.steps) * TINY.restarts
    assert all(a >= b for a, b in zip(one["calibrated"]["positives"],
                                      full["calibrated"]["positives"], strict=True))
    assert set(full["class_agreement"]) == {"positives", "negatives"}


def test_scoring_a_row_counts_every_image_once(tmp_cache):
    row = tables.Row("t", "dcgan-mnist", "gen:dcgan-mnist:1", "data:mnist-unseen", "-")
    res = tables.score(row, TINY, n=4, log=lambda m: None)
    assert res["TP"] + res["FN"] == 4 and res["FP"] + res["TN"] == 4
    assert res["accuracy"] == pytest.approx((res["TP"] + res["TN"]) / 8)
    assert 0.0 <= res["auc"] <= 1.0
    assert res["profile"]["threshold"] > res["profile"]["mu"]
    assert len(res["calibrated"]["negatives"]) == 4
    json.dumps(res)  # the results file is plain JSON
    uncal = tables.score(tables.Row("u", "dcgan-mnist", "gen:dcgan-mnist:1", "data:mnist-unseen",
                                    "-", calibrated=False), TINY, n=4, log=lambda m: None)
    # Without calibration the losses are the model's own: cached, not recomputed.
    assert uncal["calibrated"]["profile"] != res["calibrated"]["profile"]


def test_plan_lists_each_inversion_once_row_by_row():
    rows = tables.TABLES["core"][1] + tables.TABLES["6"][1]
    jobs = workers.plan(rows, TINY, 5)
    names = [(j.model, j.spec) for j in jobs]
    assert len(names) == len(set(names)) == 8  # 4 sets, on dcgan-mnist and the reference
    first_row = {"gen:dcgan-mnist:0", "gen:dcgan-mnist:1", "data:mnist-unseen"}
    assert {s for _, s in names[:6]} == first_row
    assert [m for m, _ in names[:6]] == ["dcgan-mnist"] * 3 + ["ref-photo"] * 3
    assert names[6:] == [("dcgan-mnist", "gen:vae-mnist:1"), ("ref-photo", "gen:vae-mnist:1")]


def test_appends_from_two_writers_keep_whole_lines(tmp_cache):
    gen = sets.load_model("dcgan-mnist")
    ident = cache.identity(gen, TINY)
    path = cache.cache_path(gen, TINY)
    path.parent.mkdir(parents=True)
    path.write_text("")  # a writer killed between creating the file and its header
    cache.append(path, ident, [{"sha": "a", "loss": 1.0, "steps": 1}])
    path.write_text(path.read_text() + json.dumps({"identity": ident}) + "\n")  # a 2nd header
    cache.append(path, ident, [{"sha": "b", "loss": 2.0, "steps": 1}])
    assert set(cache.read(path, ident)) == {"a", "b"}


def test_pinned_workers_fill_the_cache_the_tables_then_read(tmp_cache, tmp_images, monkeypatch):
    jobs = [workers.Job("dcgan-mnist", "gen:dcgan-mnist:3", 2, TINY),
            workers.Job("dcgan-mnist", "gen:dcgan-mnist:4", 2, TINY),
            workers.Job("no-such-model", "gen:dcgan-mnist:4", 2, TINY)]
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    assert workers.fill_cache(jobs, 2, log=lambda m: None, cache_root=tmp_cache,
                              images_dir=tmp_images) == 1
    gen = sets.load_model("dcgan-mnist")

    def refuse(*a, **k):
        raise AssertionError("the workers' losses were not in the cache")

    monkeypatch.setattr(cache, "invert", refuse)
    for seed in (3, 4):
        loss, _ = cache.losses(gen, sets.load_set(f"gen:dcgan-mnist:{seed}", 2), TINY,
                               log=lambda m: None)
        assert np.all(loss > 0)


def test_generated_set_is_stored_and_read_back_not_regenerated(tmp_images, monkeypatch):
    first = sets.load_set("gen:dcgan-mnist:5", 3)
    stored = tmp_images / "dcgan-mnist-seed5-n3.npz"
    assert stored.is_file()
    model = sets.load_model("dcgan-mnist")
    monkeypatch.setattr(type(model), "generate",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    np.testing.assert_array_equal(sets.load_set("gen:dcgan-mnist:5", 3), first)


def test_partial_scoring_inverts_nothing_and_lists_rows_not_measured(
        tmp_cache, tmp_path, monkeypatch):
    from benchmarks.accuracy import __main__ as cli

    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(sets, "MODELS_DIR", tmp_path / "models")
    quick = InversionConfig(steps=20, restarts=2)

    # The held-out-digits row is fully cached; the overlap row has its profile and positives
    # cached (the same sets), but its negatives need a model nobody has trained.
    monkeypatch.setattr(cache, "invert", _brightness_invert(1.0))
    held_out = cli.chosen_rows("core", ["held-out"])[0]
    measured = tables.score(held_out, quick, 10, log=lambda m: None)

    def refuse(*a, **k):
        raise AssertionError("--partial inverted an image")

    monkeypatch.setattr(cache, "invert", refuse)
    assert cli.main(["core", "7", "--quick", "--partial", "--rows", "held-out", "50 %"]) == 0
    res = tmp_path / "results"
    core = json.loads((res / "table-core-20x2-n10-part.json").read_text())
    assert core["not_measured"] == [] and len(core["rows"]) == 1
    assert core["rows"][0]["TP"] == measured["TP"] and core["rows"][0]["auc"] == measured["auc"]
    out = json.loads((res / "table-7-20x2-n10-part-partial.json").read_text())
    assert out["rows"] == [] and out["not_measured"] == ["overlap 50 %"]
    assert not (tmp_path / "models").exists()  # no overlap model was trained
    md = (res / "table-7-20x2-n10-part-partial.md").read_text()
    assert "| overlap 50 % | not measured yet |" in md


def test_untrained_overlap_model_is_known_before_loading_its_set(tmp_path, monkeypatch):
    monkeypatch.setattr(sets, "MODELS_DIR", tmp_path / "models")
    assert sets.needs_training("gen:dcgan-mnist-overlap-0.5:1")
    assert sets.needs_training("1977:gen:dcgan-mnist-overlap-0.5:1")
    assert not sets.needs_training("gen:dcgan-mnist:1")
    assert not sets.needs_training("data:mnist-a")


def test_the_64px_model_is_benchmark_only_with_its_own_data_and_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(sets, "MODELS_DIR", tmp_path / "models")
    assert sets.needs_training("gen:dcgan-photo64:1")
    assert sets.training_data("dcgan-photo64") == "photo64-train"
    assert tables.unseen_set("dcgan-photo64") == "data:photo64-heldout"
    assert tables.unseen_set("dcgan-photo") == "data:photo-heldout"
    assert tables.unseen_set("vae-mnist") == "data:mnist-unseen"
    assert sets.default_reference("dcgan-photo64") == "ref-photo"
    assert sets.default_reference("dcgan-mnist-overlap-0.5") == "ref-photo"
    assert sets.default_reference("ref-photo") == "dcgan-photo"
    rows = tables.TABLES["second-64"][1]
    assert {r.settings(InversionConfig()).steps for r in rows} == {500}
    assert {r.settings(InversionConfig()).restarts for r in rows} == {4}
    assert all(r.second_chance == 5.0 and r.model == "dcgan-photo64" for r in rows)


def test_second_chance_time_cost_weighs_flagged_images_by_the_measured_ratio():
    from benchmarks.second_chance_cost import row_extra

    row = {"n": 100, "second_chance": {"flagged": {"profile": 1, "positives": 2, "negatives": 97},
                                       "extra_pct": 20.5}}
    out = row_extra(row, ratio=0.3)
    assert out["flagged"] == 100 and out["images"] == 300
    assert out["extra_time_pct"] == pytest.approx(10.0)
    assert out["extra_steps_pct"] == 20.5


def test_diagnostic_and_trimmed_rows_change_only_their_settings():
    spec = InversionConfig()
    lr_rows = tables.TABLES["5lr"][1]
    assert {(r.metric, r.settings(spec).lr) for r in lr_rows} == {
        (m, lr) for m in ("mae", "ssim") for lr in (0.03, 0.01)}
    assert all(r.settings(spec).steps == spec.steps for r in lr_rows)
    trimmed = tables.TABLES["trim"][1]
    assert all(r.trim_profile for r in trimmed)
    assert {r.specs for r in trimmed} == {
        r.specs for t in ("2", "3", "4", "5", "7") for r in tables.TABLES[t][1]}


def _brightness_invert(scale: float):
    """A stand-in inversion: losses are functions of brightness, times ``scale``."""
    def invert(gen, images, config):
        n = len(images)
        mean = images.reshape(n, -1).mean(1)
        loss = mean + 0.01 if gen.name == "dcgan-mnist" else np.sqrt(mean) + 0.02
        return types.SimpleNamespace(loss=loss * scale,
                                     steps_run=np.full((n, config.restarts), config.steps))
    return invert


def test_crossdevice_compare_measures_loss_agreement_and_verdicts(tmp_cache, tmp_path,
                                                                   monkeypatch):
    from benchmarks.accuracy import crossdevice

    quick = InversionConfig(steps=20, restarts=2)
    row = crossdevice.find_row("held-out")
    monkeypatch.setattr(cache, "invert", _brightness_invert(1.0))
    tables.score(row, quick, 10, log=lambda m: None)  # the main cache
    monkeypatch.setattr(cache, "invert", _brightness_invert(1.001))  # "another device"
    other = tmp_path / "other"
    crossdevice.invert_row(row, quick, 10, other)
    before = {p.name: p.read_text() for p in other.iterdir()}
    out = crossdevice.compare(other, row, quick, 10)
    assert set(out["files"]) == set(before) and len(before) == 2  # model and reference
    for f in out["files"].values():
        assert f["images"] == 30 and f["identical"] == 0
        assert f["rel_diff_max"] == pytest.approx(1e-3, rel=1e-3)
    # the same factor on model and reference leaves every calibrated loss as it was
    assert out["same_verdicts"] == 20
    assert out["scores"]["main"]["auc"] == out["scores"]["other"]["auc"]
    assert {p.name: p.read_text() for p in other.iterdir()} == before  # compare wrote nothing
    with pytest.raises(ValueError, match="no accuracy row"):
        crossdevice.find_row("no such row")


def test_reconstructions_pick_worst_then_best_and_refuse_uncached_sets(tmp_cache, tmp_path):
    from benchmarks.accuracy import reconstructions

    losses = np.array([0.5, np.nan, 0.1, 0.9, 0.2, 0.05])
    assert reconstructions.extremes(losses, 2).tolist() == [1, 3, 2, 5]
    assert reconstructions.extremes(losses[:3], 5).tolist() == [1, 2]
    out = tmp_path / "grid.png"
    assert reconstructions.main(["dcgan-mnist", "data:mnist-a", "--n", "4",
                                 "--out", str(out)]) == 2  # nothing cached: a clear refusal
    assert not out.exists()
    images = np.zeros((2, 8, 8, 1), np.uint8)
    recs = np.full((2, 8, 8, 1), 0.5, np.float32)
    reconstructions.plot(images, [("mse", recs, np.array([0.1, 0.2]))], np.array([0.1, 0.2]),
                         "title", out)
    assert out.stat().st_size > 1000


def test_warm_losses_composed_from_cold_and_one_encoder_run_equal_a_warm_inversion(tmp_cache):
    from benchmarks.accuracy import warm_spec
    from ronan_jax.engine.invert import invert

    spec = "gen:dcgan-mnist:1"
    gen, images = sets.load_model("dcgan-mnist"), sets.load_set(spec, 3)
    # nothing cold is cached yet: skipped, nothing entered
    assert warm_spec.compose_set("dcgan-mnist", spec, 3, log=lambda m: None, cold=TINY) == 0
    cache.losses(gen, images, TINY, log=lambda m: None)
    assert warm_spec.compose_set("dcgan-mnist", spec, 3, log=lambda m: None, cold=TINY) == 3
    warm = TINY.replace(warm_start=True)
    loss, steps = cache.losses(gen, images, warm, cached_only=True)
    direct = invert(gen, images.astype(np.float32) / 255.0, warm)
    np.testing.assert_allclose(loss, direct.loss, rtol=1e-5)
    assert list(steps) == [3 * TINY.steps] * 3  # 2 prior runs + the encoder's


def test_a_reduced_budget_table_is_filed_under_the_budget_its_rows_ran():
    from benchmarks.accuracy.__main__ import settings_tag, table_settings

    config = InversionConfig()
    reduced = tables.TABLES["second-64"][1]
    assert settings_tag(table_settings(reduced, config), 30) == "-500x4-n30"
    # rows at the command's own budget keep the command's tag
    assert settings_tag(table_settings(tables.TABLES["2"][1], config), 100) == ""
    # rows at different budgets are filed under the command's budget
    mixed = [reduced[0], tables.TABLES["2"][1][0]]
    assert table_settings(mixed, config) == config


def test_a_worker_whose_parent_is_gone_is_told_at_once():
    import os
    import threading

    orphaned = threading.Event()
    workers.watch_parent(os.getppid() + 10**6, poll=0.01, on_orphan=orphaned.set)
    assert orphaned.wait(5.0)
    kept, stop = threading.Event(), threading.Event()
    watcher = workers.watch_parent(os.getppid(), poll=0.01, on_orphan=kept.set, stop=stop)
    assert not kept.wait(0.2)
    stop.set()
    watcher.join(1.0)
    assert not watcher.is_alive() and not kept.is_set()


def test_larger_k_tables_rescore_k5s_second_passes_without_new_inversions():
    from ronan_jax.attribution import second_chance

    rng = np.random.default_rng(0)
    profile = rng.lognormal(-2.0, 0.8, 100)
    test = rng.lognormal(-1.0, 1.5, 200)
    at5 = second_chance.flagged(test, test, second_chance.flag_level(profile, 5.0))
    for k in tables.SECOND_KS:
        row5, rowk = tables.TABLES["second"][1][0], tables.TABLES[f"second-k{k:g}"][1][0]
        assert (rowk.label, rowk.second_chance) == (row5.label, k)
        atk = second_chance.flagged(test, test, second_chance.flag_level(profile, k))
        assert atk.sum() < at5.sum() and not (atk & ~at5).any()  # a subset of k = 5's images
        # and the second pass those images get is the same inversion (same settings and seed)
        config = row5.settings(InversionConfig())
        assert (config.replace(second_chance=k).second_pass()
                == config.replace(second_chance=5.0).second_pass())


def test_rows_are_chosen_by_substring_or_by_whole_label():
    from benchmarks.accuracy.__main__ import chosen_rows

    by_text = {r.label for r in chosen_rows("second", ["vae-mnist"])}
    assert "dcgan-mnist vs vae-mnist images, second chance" in by_text
    exact = chosen_rows("second", ["=vae-mnist vs unseen real images, second chance"])
    assert [r.label for r in exact] == ["vae-mnist vs unseen real images, second chance"]
    assert chosen_rows("second", ["=vae-mnist vs unseen real images"]) == []


def test_a_second_pass_schedules_cost_counts_each_halving_segment():
    from benchmarks.second_pass_schedules import SCHEDULES, run_steps, second_pass

    # the default: halving at 150, 400 (375 rounded to a check step of 50) and 750 of 1500
    assert run_steps(second_pass(32, (0.1, 0.25, 0.5))) == 32 * 150 + 16 * 250 + 8 * 350 + 4 * 750
    assert run_steps(InversionConfig(steps=100, restarts=8)) == 800  # no halving
    assert run_steps(InversionConfig(steps=100, restarts=3, halving_at=(0.5,))) == 3 * 50 + 2 * 50
    costs = [run_steps(second_pass(*s)) / run_steps(second_pass(*SCHEDULES[0])) for s in SCHEDULES]
    assert costs[0] == 1.0 and all(c < 1.0 for c in costs[1:])


def test_the_presets_table_scores_every_named_preset_with_its_second_pass():
    from benchmarks.accuracy import presets as presets_table

    cols = {c.name: c for c in presets_table.columns()}
    assert list(cols) == ["paper", "paper + warm", "fast", "express"]
    fast, express = cols["fast"], cols["express"]
    # first passes are cached without the second chance; the column applies it, with the
    # preset's own second pass (fast: 300-step restarts after a 1500-step first pass)
    assert fast.config.second_chance == 0.0 and fast.second_chance == 5.0 and fast.trim_failed
    assert fast.config.replace(second_chance=5.0).second_pass().steps == 300
    assert (fast.config.steps, fast.config.restarts, express.config.steps) == (1500, 1, 300)
    assert not cols["paper"].second_chance and cols["paper + warm"].config.warm_start
    assert presets_table.main(["--bogus"]) == 2
