"""The early-stopping state machine (engine.stopping.StoppingRules) on hand-made losses."""

from __future__ import annotations

import numpy as np

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.stopping import StoppingRules, halving_steps


def _rules(stop_below: np.ndarray | None = None, **config: object) -> StoppingRules:
    return StoppingRules.for_chunk(InversionConfig(steps=100, check_every=10, **config), stop_below)


def test_halving_keeps_the_better_half_of_each_images_running_restarts():
    rules = _rules(restarts=4, halving_at=(0.5,))
    best = np.array([0.4, 0.1, 0.3, 0.2, 1.0, 2.0, 3.0, 4.0])
    keep = rules.decide(np.ones(8, bool), best, 50)
    np.testing.assert_array_equal(keep, [False, True, False, True, True, True, False, False])


def test_halving_ranks_only_running_restarts_and_keeps_the_ceiling_of_half():
    rules = _rules(restarts=4, halving_at=(0.5,))
    best = np.array([0.1, 0.2, 0.3, 0.4])
    active = np.array([False, True, True, True])  # the best one already stopped
    keep = rules.decide(active, best, 50)
    np.testing.assert_array_equal(keep, [False, True, True, False])  # ceil(3 / 2) = 2 kept


def test_halving_happens_only_at_its_step():
    rules = _rules(restarts=2, halving_at=(0.5,))
    best = np.array([0.1, 0.2])
    np.testing.assert_array_equal(rules.decide(np.ones(2, bool), best, 40), [True, True])
    np.testing.assert_array_equal(rules.decide(np.ones(2, bool), best, 50), [True, False])


def test_halving_steps_round_to_check_steps_and_never_before_the_first_check():
    assert halving_steps(InversionConfig(steps=100, check_every=10, halving_at=(0.34, 0.5))) == {30, 50}
    assert halving_steps(InversionConfig(steps=100, check_every=10, halving_at=(0.01,))) == {10}


def test_plateau_stops_a_stalled_run_and_keeps_an_improving_one():
    rules = _rules(restarts=3, plateau_window=20, plateau_rtol=0.1)
    active = np.ones(3, bool)
    at_0 = np.array([1.0, 1.0, np.inf])
    # Step 10 has no loss 20 steps back: nothing can be judged stalled yet.
    np.testing.assert_array_equal(rules.decide(active, at_0, 10), [True, True, True])
    np.testing.assert_array_equal(rules.decide(active, at_0 * 0.95, 20), [True, True, True])
    # Step 30 against step 10: run 0 improved by 50 %, run 1 by 5 % (< 10 %): stalled;
    # run 2 never had a finite loss: stalled too.
    at_30 = np.array([0.5, 0.95, np.inf])
    np.testing.assert_array_equal(rules.decide(active, at_30, 30), [True, False, False])
    assert sorted(rules.history) == [10, 20, 30]


def test_fresh_rules_have_no_history_so_each_chunk_is_judged_on_its_own():
    a = _rules(restarts=1, plateau_window=10)
    a.decide(np.ones(1, bool), np.array([1.0]), 10)
    b = _rules(restarts=1, plateau_window=10)
    assert b.history == {} and sorted(a.history) == [10]


def test_stop_below_stops_every_restart_of_a_decided_image_only():
    rules = _rules(np.array([0.5, 0.5, 0.2]), restarts=2)
    best = np.array([0.9, 0.4, 0.6, 0.7, 0.2, 0.3])  # image 2 is at its threshold, not below
    keep = rules.decide(np.ones(6, bool), best, 10)
    np.testing.assert_array_equal(keep, [False, False, True, True, True, True])


def test_decide_returns_a_new_mask_within_the_active_runs():
    rules = _rules(np.array([1.0]), restarts=2)
    active = np.array([True, False])
    keep = rules.decide(active, np.array([2.0, 2.0]), 10)
    np.testing.assert_array_equal(keep, [True, False])
    assert keep is not active
    np.testing.assert_array_equal(active, [True, False])


def test_checks_only_between_segments_at_check_steps_when_a_rule_is_on():
    assert not _rules(restarts=2).enabled
    assert not _rules(restarts=2).checks_at(10)
    rules = _rules(np.array([0.1]), restarts=2)
    assert rules.enabled
    assert [s for s in range(1, 101) if rules.checks_at(s)] == list(range(10, 100, 10))
    assert _rules(restarts=2, plateau_window=20).enabled
    assert _rules(restarts=2, halving_at=(0.5,)).enabled
