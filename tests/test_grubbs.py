"""One-sided Grubbs' test: reference critical values, p-value consistency, vectorisation, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from ronan_jax.attribution.grubbs import (
    GrubbsResult,
    critical_value,
    grubbs_test,
    p_values,
    verdict_labels,
    z_scores,
)

# One-sided Grubbs critical values: N -> (alpha 0.05, alpha 0.01).
PAPER_TABLE = {
    10: (2.1761, 2.4097),
    20: (2.5566, 2.8838),
    50: (2.9570, 3.3366),
    100: (3.2095, 3.6002),
    200: (3.4324, 3.8221),
}


@pytest.mark.parametrize("n", sorted(PAPER_TABLE))
def test_critical_value_matches_spec_table_to_four_decimals(n: int) -> None:
    g05, g01 = PAPER_TABLE[n]
    assert round(critical_value(n, 0.05), 4) == g05
    assert round(critical_value(n, 0.01), 4) == g01
    assert critical_value(n) == critical_value(n, 0.05)


def test_critical_value_follows_the_formula_and_its_bounds() -> None:
    n, alpha = 37, 0.1
    t = stats.t.isf(alpha / n, n - 2)
    expected = (n - 1) / np.sqrt(n) * np.sqrt(t**2 / (n - 2 + t**2))
    assert critical_value(n, alpha) == pytest.approx(expected, rel=1e-12)
    # Stricter alpha -> larger G; G is always below the largest reachable z, (N-1)/sqrt(N).
    for m in (3, 5, 100, 1000):
        assert critical_value(m, 0.01) > critical_value(m, 0.05) > 0.0
        assert critical_value(m, 0.01) < (m - 1) / np.sqrt(m)


@pytest.mark.parametrize("n", [3, 10, 100, 200])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_p_value_below_alpha_exactly_when_z_exceeds_critical_value(n: int, alpha: float) -> None:
    g = critical_value(n, alpha)
    z = np.linspace(-2.0, (n - 1) / np.sqrt(n) + 0.5, 2001)
    z = z[np.abs(z - g) > 1e-9]  # leave the boundary itself to the next test
    p = p_values(z, n)
    np.testing.assert_array_equal(p < alpha, z > g)
    # Just either side of the boundary too.
    eps = 1e-7 * g
    assert p_values(g + eps, n) < alpha < p_values(g - eps, n)


@pytest.mark.parametrize("n", sorted(PAPER_TABLE))
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_p_value_equals_alpha_at_the_critical_value(n: int, alpha: float) -> None:
    assert float(p_values(critical_value(n, alpha), n)) == pytest.approx(alpha, rel=1e-9)


def test_p_value_edges_and_monotonicity() -> None:
    n = 50
    z_max = (n - 1) / np.sqrt(n)
    p = p_values(np.array([-np.inf, -3.0, 0.0, z_max, z_max + 1, np.inf, np.nan]), n)
    np.testing.assert_array_equal(p[:6], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert np.isnan(p[6])
    grid = p_values(np.linspace(0.0, z_max, 500), n)
    assert np.all((grid >= 0.0) & (grid <= 1.0))
    assert np.all(np.diff(grid) <= 0.0)
    # Small positive z: Bonferroni bound N * sf exceeds 1 and is clipped.
    assert float(p_values(0.1, n)) == 1.0


def test_p_value_follows_the_bonferroni_formula_inside_the_range() -> None:
    n, z = 20, 2.3
    t2 = n * (n - 2) * z**2 / ((n - 1) ** 2 - n * z**2)
    expected = n * stats.t.sf(np.sqrt(t2), n - 2)
    assert float(p_values(z, n)) == pytest.approx(expected, rel=1e-12)


def test_vectorised_calls_equal_per_element_calls() -> None:
    rng = np.random.default_rng(0)
    losses = rng.normal(1.0, 0.5, size=(4, 25))
    mu, sigma, n = 0.9, 0.2, 100
    res = grubbs_test(losses, mu, sigma, n)
    assert res.z.shape == res.p_value.shape == res.belonging.shape == (4, 25)
    assert res.critical_value.shape == (4, 25)
    for idx in np.ndindex(losses.shape):
        one = grubbs_test(losses[idx], mu, sigma, n)
        assert one.z.shape == ()
        assert float(one.z) == res.z[idx]
        assert float(one.p_value) == res.p_value[idx]
        assert bool(one.belonging) == res.belonging[idx]
    np.testing.assert_array_equal(res.z, z_scores(losses, mu, sigma))
    np.testing.assert_array_equal(res.p_value, p_values(res.z, n))
    np.testing.assert_array_equal(
        p_values(res.z.ravel(), n), [float(p_values(v, n)) for v in res.z.ravel()]
    )


def test_grubbs_test_verdicts_follow_the_spec_rule() -> None:
    mu, sigma, n = 2.0, 0.5, 100
    g = critical_value(n)  # 3.2095
    losses = mu + sigma * np.array([-1.0, 0.0, 3.0, g - 1e-6, g + 1e-6, 5.0])
    res = grubbs_test(losses, mu, sigma, n)
    np.testing.assert_allclose(res.z, [-1.0, 0.0, 3.0, g - 1e-6, g + 1e-6, 5.0], rtol=1e-9)
    np.testing.assert_array_equal(res.belonging, [True, True, True, True, False, False])
    np.testing.assert_array_equal(res.critical_value, np.full(6, g))
    # belonging <=> not (p < alpha), away from the boundary
    np.testing.assert_array_equal(res.belonging, ~(res.p_value < 0.05))
    assert res.p_value[0] == 1.0 and res.p_value[-1] < 0.05


def test_stricter_alpha_accepts_more_images_as_belonging() -> None:
    losses = np.array([1.0 + 3.4 * 0.1])  # z = 3.4 against N = 100
    assert not grubbs_test(losses, 1.0, 0.1, 100, alpha=0.05).belonging[0]
    assert grubbs_test(losses, 1.0, 0.1, 100, alpha=0.01).belonging[0]


def test_grubbs_result_is_frozen_and_read_only() -> None:
    res = grubbs_test([1.0, 2.0], 1.0, 1.0, 10)
    assert isinstance(res, GrubbsResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.z = np.zeros(2)  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        res.belonging[0] = False
    assert res.belonging.dtype == np.bool_


def test_verdict_labels_map_booleans_to_strings() -> None:
    labels = verdict_labels(np.array([[True, False], [False, True]]))
    assert labels.tolist() == [["belonging", "non-belonging"], ["non-belonging", "belonging"]]
    assert verdict_labels(True).tolist() == "belonging"
    res = grubbs_test([0.0, 10.0], 0.0, 1.0, 100)
    assert verdict_labels(res.belonging).tolist() == ["belonging", "non-belonging"]
    with pytest.raises(ValueError, match="boolean"):
        verdict_labels(np.array([0.3, 0.9]))


@pytest.mark.parametrize("n", [2, 0, -5])
def test_too_small_profile_raises(n: int) -> None:
    with pytest.raises(ValueError, match="N >= 3"):
        critical_value(n)
    with pytest.raises(ValueError, match="N >= 3"):
        p_values([1.0], n)
    with pytest.raises(ValueError, match="N >= 3"):
        grubbs_test([1.0], 0.0, 1.0, n)


@pytest.mark.parametrize("n", [10.5, True, "100"])
def test_non_integer_profile_size_raises(n: object) -> None:
    with pytest.raises(ValueError, match="integer"):
        critical_value(n)  # type: ignore[arg-type]


def test_numpy_integer_profile_size_is_accepted() -> None:
    assert critical_value(np.int64(100)) == critical_value(100)


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.inf, np.nan])
def test_bad_sigma_raises(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        z_scores([1.0], 0.0, sigma)
    with pytest.raises(ValueError, match="sigma"):
        grubbs_test([1.0], 0.0, sigma, 100)


@pytest.mark.parametrize("mu", [np.inf, -np.inf, np.nan])
def test_non_finite_mu_raises(mu: float) -> None:
    with pytest.raises(ValueError, match="mu"):
        grubbs_test([1.0], mu, 1.0, 100)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.05, 1.5, np.nan])
def test_alpha_outside_open_unit_interval_raises(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        critical_value(100, alpha)
    with pytest.raises(ValueError, match="alpha"):
        grubbs_test([1.0], 0.0, 1.0, 100, alpha=alpha)


def test_non_finite_losses_raise_with_count_and_indices() -> None:
    losses = np.array([0.5, np.nan, 0.7, np.inf, -np.inf])
    with pytest.raises(ValueError, match=r"3 non-finite .* indices \[1, 3, 4\]"):
        grubbs_test(losses, 0.5, 0.1, 100)
    with pytest.raises(ValueError, match=r"1 non-finite .* indices \[\(1, 0\)\]"):
        z_scores(np.array([[1.0, 2.0], [np.nan, 3.0]]), 0.0, 1.0)


def test_high_outliers_drops_failed_inversions_only():
    from ronan_jax.attribution import grubbs

    rng = np.random.default_rng(0)
    body = rng.normal(0.1, 0.02, 98)
    values = np.r_[body, 3.7, 0.9]  # two failed inversions
    out = grubbs.high_outliers(values, 0.05)
    assert out.tolist() == [False] * 98 + [True, True]
    assert not grubbs.high_outliers(body, 0.05).any()
    low = np.r_[body, -5.0]  # one-sided: a very low value is never trimmed
    assert not grubbs.high_outliers(low, 0.05).any()
    assert grubbs.high_outliers([1.0, 1.0, 1.0, 9.0], 0.05).sum() <= 1  # keeps >= 3
