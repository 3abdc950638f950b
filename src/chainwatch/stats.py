"""Two-sample tests for drift: standard library by default, SciPy's exact tests when installed.

Rates use a two-proportion z-test, or Fisher's exact test when an expected cell count is
below five. Continuous values use the Mann-Whitney U test (normal approximation with tie and
continuity corrections; SciPy picks an exact distribution for small samples). P-values of
one check are adjusted together with Holm's step-down method.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TestResult:
    """A test's name, statistic and two-sided p-value."""

    test: str
    statistic: float
    p_value: float


_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the tests' implementation: ``auto`` (SciPy when installed), ``stdlib``, ``scipy``."""
    global _backend
    if name not in ("auto", "stdlib", "scipy"):
        raise ValueError("backend must be 'auto', 'stdlib' or 'scipy'")
    if name == "scipy":
        try:
            import scipy.stats  # noqa: F401
        except ImportError:
            raise ImportError("exact tests need SciPy: pip install 'chainwatch[stats]'") from None
    _backend = name


def _scipy_stats() -> object | None:
    if _backend == "stdlib":
        return None
    try:
        from scipy import stats
    except ImportError:
        return None
    return stats


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sample."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for k1/n1 against k2/n2."""
    total, successes = n1 + n2, k1 + k2
    low, high = max(0, successes - n2), min(successes, n1)

    def log_p(k: int) -> float:
        return (
            _log_choose(n1, k) + _log_choose(n2, successes - k) - _log_choose(total, successes)
        )

    observed = log_p(k1)
    p = sum(math.exp(lp) for lp in map(log_p, range(low, high + 1)) if lp <= observed + 1e-7)
    return min(1.0, p)


def rate_test(k1: int, n1: int, k2: int, n2: int, *, exact: bool | None = None) -> TestResult:
    """Compare two rates: z-test when every expected count is at least 5, else Fisher's test.

    Args:
        k1: events in the baseline.
        n1: calls in the baseline.
        k2: events in the current window.
        n2: calls in the current window.
        exact: force Fisher's test (True) or the z-test (False); default chooses by counts.
    """
    pooled = (k1 + k2) / (n1 + n2)
    small = min(n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled)) < 5
    if exact or (exact is None and small):
        scipy_stats = _scipy_stats()
        if scipy_stats is not None:
            _, p = scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])  # type: ignore[attr-defined]
            p_value = float(p)
            return TestResult("fisher_exact", float(k2 / n2 - k1 / n1),
                              p_value if math.isfinite(p_value) else 1.0)
        return TestResult("fisher_exact", k2 / n2 - k1 / n1, fisher_exact(k1, n1, k2, n2))
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return TestResult("two_proportion_z", 0.0, 1.0)
    z = (k2 / n2 - k1 / n1) / se
    return TestResult("two_proportion_z", z, min(1.0, 2 * normal_sf(abs(z))))


def mann_whitney(baseline: Sequence[float], current: Sequence[float]) -> TestResult:
    """Two-sided Mann-Whitney U test (SciPy's when installed, else the normal approximation)."""
    scipy_stats = _scipy_stats()
    if scipy_stats is not None:
        result = scipy_stats.mannwhitneyu(  # type: ignore[attr-defined]
            current, baseline, alternative="two-sided"
        )
        p_value = float(result.pvalue)
        # Newer SciPy answers NaN when both samples are one repeated value: no evidence.
        return TestResult("mann_whitney_u", float(result.statistic),
                          p_value if math.isfinite(p_value) else 1.0)
    n1, n2 = len(baseline), len(current)
    ordered = sorted(baseline)
    u = 0.0
    for value in current:
        below = bisect.bisect_left(ordered, value)
        u += below + (bisect.bisect_right(ordered, value, below) - below) / 2.0
    ties = float(sum(t**3 - t for t in Counter([*baseline, *current]).values() if t > 1))
    mean = n1 * n2 / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return TestResult("mann_whitney_u", u, 1.0)
    z = (abs(u - mean) - 0.5) / math.sqrt(variance)
    return TestResult("mann_whitney_u", u, min(1.0, 2 * normal_sf(max(z, 0.0))))


def wasserstein(baseline: Sequence[float], current: Sequence[float]) -> float:
    """First Wasserstein distance between two empirical distributions."""
    a, b = sorted(baseline), sorted(current)
    points = sorted(set(a) | set(b))
    distance = 0.0
    ia = ib = 0
    for left, right in zip(points, points[1:], strict=False):
        while ia < len(a) and a[ia] <= left:
            ia += 1
        while ib < len(b) and b[ib] <= left:
            ib += 1
        distance += abs(ia / len(a) - ib / len(b)) * (right - left)
    return distance


def spread(values: Sequence[float]) -> float:
    """Interquartile range, or the standard deviation when the IQR is zero."""
    ordered = sorted(values)
    n = len(ordered)
    iqr = ordered[(3 * n) // 4] - ordered[n // 4]
    if iqr > 0:
        return iqr
    mean = sum(ordered) / n
    return math.sqrt(sum((v - mean) ** 2 for v in ordered) / max(1, n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order."""
    p_values = [p if math.isfinite(p) else 1.0 for p in p_values]
    m = len(p_values)
    order = sorted(range(m), key=p_values.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
