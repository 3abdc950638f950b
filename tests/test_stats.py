"""The two-sample tests behind drift detection, checked against SciPy's reference versions."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest
from scipy import stats as scipy_stats

from chainwatch import stats


@pytest.fixture
def stdlib_backend() -> Iterator[None]:
    stats.set_backend("stdlib")
    yield
    stats.set_backend("auto")


@pytest.fixture
def scipy_backend() -> Iterator[None]:
    stats.set_backend("scipy")
    yield
    stats.set_backend("auto")


def random_tables(seed: int, count: int) -> list[tuple[int, int, int, int]]:
    """Edge cases, then random 2x2 tables as (k1, n1, k2, n2)."""
    rng = random.Random(seed)
    tables = [
        (0, 10, 0, 10), (10, 10, 10, 10), (5, 10, 5, 10), (0, 1, 1, 1), (1, 50, 4, 50),
        (0, 100, 7, 100), (3, 20, 3, 20), (10, 10, 0, 10), (2, 1000, 9, 1000),
        (20, 500, 40, 600), (1, 3, 2, 7), (0, 300, 1, 300),
    ]
    for _ in range(count):
        n1, n2 = rng.randint(1, 250), rng.randint(1, 250)
        tables.append((rng.randint(0, n1), n1, rng.randint(0, n2), n2))
    return tables


def test_fisher_exact_matches_scipy() -> None:
    for k1, n1, k2, n2 in random_tables(seed=11, count=300):
        expected = scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue
        got = stats.fisher_exact(k1, n1, k2, n2)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (k1, n1, k2, n2)
        assert 0.0 <= got <= 1.0


def test_fisher_exact_of_a_clear_difference_is_small_and_of_equal_rates_is_one() -> None:
    assert stats.fisher_exact(5, 10, 5, 10) == pytest.approx(1.0)
    assert stats.fisher_exact(0, 40, 12, 40) < 1e-3


def test_rate_test_uses_fisher_when_an_expected_count_is_below_five(
    stdlib_backend: None,
) -> None:
    small = stats.rate_test(1, 50, 4, 50)  # pooled 5 %: 2.5 expected events a window
    assert small.test == "fisher_exact"
    assert small.p_value == pytest.approx(stats.fisher_exact(1, 50, 4, 50))
    assert small.statistic == pytest.approx(4 / 50 - 1 / 50)

    rare_failures = stats.rate_test(198, 200, 195, 200)  # few non-events are small counts too
    assert rare_failures.test == "fisher_exact"

    large = stats.rate_test(50, 500, 80, 500)
    assert large.test == "two_proportion_z"
    assert stats.rate_test(50, 500, 80, 500, exact=True).test == "fisher_exact"
    assert stats.rate_test(1, 50, 4, 50, exact=False).test == "two_proportion_z"


def test_rate_test_z_matches_the_chi_square_test_without_continuity_correction(
    stdlib_backend: None,
) -> None:
    rng = random.Random(5)
    for _ in range(100):
        n1, n2 = rng.randint(200, 2000), rng.randint(200, 2000)
        k1, k2 = rng.randint(20, n1 // 4), rng.randint(20, n2 // 4)
        result = stats.rate_test(k1, n1, k2, n2)
        assert result.test == "two_proportion_z"
        table = [[k1, n1 - k1], [k2, n2 - k2]]
        chi2 = scipy_stats.chi2_contingency(table, correction=False)
        assert result.p_value == pytest.approx(chi2.pvalue, rel=1e-9, abs=1e-15)
        assert result.statistic**2 == pytest.approx(chi2.statistic, rel=1e-9)
        assert (result.statistic > 0) == (k2 / n2 > k1 / n1)


def test_rate_test_without_any_events_is_not_significant(stdlib_backend: None) -> None:
    assert stats.rate_test(0, 500, 0, 500).p_value == pytest.approx(1.0)
    assert stats.rate_test(500, 500, 500, 500).p_value == pytest.approx(1.0)


def test_rate_test_scipy_backend_gives_the_same_p_values(scipy_backend: None) -> None:
    for k1, n1, k2, n2 in [(1, 50, 4, 50), (0, 100, 7, 100), (50, 500, 80, 500)]:
        with_scipy = stats.rate_test(k1, n1, k2, n2)
        stats.set_backend("stdlib")
        without = stats.rate_test(k1, n1, k2, n2)
        stats.set_backend("scipy")
        assert with_scipy.test == without.test
        assert with_scipy.p_value == pytest.approx(without.p_value, rel=1e-9)


def samples(rng: random.Random, n: int, shift: float, *, ties: bool) -> list[float]:
    if ties:
        return [float(rng.randint(0, 20) + (1 if rng.random() < shift else 0)) for _ in range(n)]
    return [rng.lognormvariate(shift, 1.0) for _ in range(n)]


@pytest.mark.parametrize("ties", [False, True])
def test_mann_whitney_stdlib_matches_scipy_for_large_samples(ties: bool) -> None:
    rng = random.Random(7 + ties)
    for i in range(25):
        n1, n2 = rng.randint(150, 600), rng.randint(150, 600)
        shift = 0.04 * (i % 5)
        baseline = samples(rng, n1, 0.0, ties=ties)
        current = samples(rng, n2, shift, ties=ties)
        stats.set_backend("stdlib")
        try:
            ours = stats.mann_whitney(baseline, current)
        finally:
            stats.set_backend("auto")
        reference = scipy_stats.mannwhitneyu(current, baseline, alternative="two-sided")
        assert ours.test == "mann_whitney_u"
        assert ours.statistic == pytest.approx(float(reference.statistic))
        assert ours.p_value == pytest.approx(float(reference.pvalue), rel=1e-6, abs=1e-9)


def test_mann_whitney_detects_a_shift_and_not_an_identical_sample(stdlib_backend: None) -> None:
    rng = random.Random(3)
    base = [rng.lognormvariate(0, 0.5) for _ in range(400)]
    assert stats.mann_whitney(base, list(base)).p_value > 0.9
    assert stats.mann_whitney(base, [v * 1.5 for v in base]).p_value < 1e-6
    assert stats.mann_whitney([0.0] * 200, [0.0] * 200).p_value == 1.0


def test_mann_whitney_scipy_backend_is_used_when_chosen(scipy_backend: None) -> None:
    base, cur = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    exact = scipy_stats.mannwhitneyu(cur, base, alternative="two-sided").pvalue
    assert stats.mann_whitney(base, cur).p_value == pytest.approx(exact)
    stats.set_backend("stdlib")
    assert stats.mann_whitney(base, cur).p_value != pytest.approx(exact)


def test_wasserstein_matches_scipy() -> None:
    rng = random.Random(13)
    for i in range(60):
        a = [rng.gauss(0, 1) for _ in range(rng.randint(1, 300))]
        b = [round(rng.gauss(0.3 * (i % 4), 2), 1) for _ in range(rng.randint(1, 300))]
        assert stats.wasserstein(a, b) == pytest.approx(
            scipy_stats.wasserstein_distance(a, b), rel=1e-9, abs=1e-12
        )
    assert stats.wasserstein([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert stats.wasserstein([0.0], [3.0]) == pytest.approx(3.0)


def test_holm_matches_a_hand_computed_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.06, 0.04*1) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.2]) == pytest.approx([0.2])
    assert stats.holm([]) == []


def test_holm_rejects_what_bonferroni_would_not() -> None:
    p = [0.001, 0.012, 0.02, 0.3]
    adjusted = stats.holm(p)
    assert adjusted == pytest.approx([0.004, 0.036, 0.04, 0.3])
    assert sum(a < 0.05 for a in adjusted) == 3
    assert sum(min(1.0, 4 * x) < 0.05 for x in p) == 2


def test_normal_sf_median_and_spread() -> None:
    for z in (-3.0, -1.0, 0.0, 0.5, 1.96, 4.0):
        assert stats.normal_sf(z) == pytest.approx(scipy_stats.norm.sf(z), rel=1e-12)
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert stats.spread([float(i) for i in range(100)]) == 50.0
    # a zero IQR falls back to the standard deviation
    mostly_zero = [0.0] * 90 + [1.0] * 10
    expected_sd = math.sqrt(sum((v - 0.1) ** 2 for v in mostly_zero) / 99)
    assert stats.spread(mostly_zero) == pytest.approx(expected_sd)


def test_set_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="backend"):
        stats.set_backend("numpy")
