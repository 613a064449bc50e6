"""The detectors' arithmetic and the verdict on one series, without Prometheus."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from detector import algorithms
from detector.rules import parse_rules
from detector.verdicts import Verdict, judge


def spec(**detector: object):  # type: ignore[no-untyped-def]
    rule = {"name": "r", "query": "up", "interval": "1m", "detector": detector}
    return parse_rules({"rules": [rule]}).rules[0].detector


def test_zscore_and_its_flat_line_cases() -> None:
    assert algorithms.zscore([1, 2, 3, 4, 5], 3 + 2 * math.sqrt(2)) == pytest.approx(2)
    assert algorithms.zscore([4, 4, 4], 4) == 0
    assert algorithms.zscore([4, 4, 4], 4.5) == math.inf
    assert algorithms.zscore([4, 4, 4], 3) == -math.inf


def test_robust_zscore_is_not_blinded_by_an_outlier_in_the_history() -> None:
    history = [10, 11, 9, 10, 11, 9, 10, 1000]
    assert algorithms.robust_zscore(history, 20) > 3.5
    assert algorithms.zscore(history, 20) < 1


def test_ewma_weights_recent_samples_more() -> None:
    mean, var = algorithms.ewma([0.0] * 20 + [10.0] * 5, 0.3)
    assert 8 < mean < 10 and var > 0
    assert algorithms.ewma([3.0] * 10, 0.5) == (3.0, 0.0)


# Whole numbers: a spread far below float resolution of the shifted values (1e-30 next to 1.0)
# cannot survive a change of units, in any arithmetic.
counts = st.integers(-1000, 1000).map(float)


@given(st.lists(counts, min_size=3, max_size=50), counts, st.floats(0.01, 100), counts)
def test_scores_do_not_depend_on_units(history: list[float], x: float, a: float, b: float) -> None:
    scaled = [a * v + b for v in history]
    for score in (algorithms.zscore, algorithms.robust_zscore):
        before, after = score(history, x), score(scaled, a * x + b)
        assume(math.isfinite(before) and abs(before) < 1e6)
        assert after == pytest.approx(before, rel=1e-4, abs=1e-4)


@given(st.floats(-100, 100), st.floats(-1e3, 1e3), st.integers(3, 40))
def test_a_line_is_fitted_exactly(slope: float, intercept: float, n: int) -> None:
    times = [1.7e9 + 60 * i for i in range(n)]
    got_slope, got_intercept = algorithms.linear_fit(times, [slope * t + intercept for t in times])
    assert got_slope == pytest.approx(slope, rel=1e-6, abs=1e-9)
    mid = times[n // 2]
    assert got_slope * mid + got_intercept == pytest.approx(slope * mid + intercept, rel=1e-6)


def test_crossing_time_only_in_the_direction_that_matters() -> None:
    times, values = [0, 60, 120], [0.5, 0.6, 0.7]
    assert algorithms.crossing_time(times, values, 0.9, "above") == pytest.approx(240)
    assert algorithms.crossing_time(times, values, 0.1, "below") is None
    assert algorithms.crossing_time(times, values[::-1], 0.1, "below") == pytest.approx(360)


def test_no_verdict_without_a_fresh_finite_sample_or_enough_history() -> None:
    threshold = spec(kind="threshold", threshold=1)
    assert judge(threshold, [], 60).why == "stale"
    assert judge(threshold, [(0, 5.0)], 60).why == "stale"  # the latest is not at `at`
    assert judge(threshold, [(60, math.nan)], 60).why == "nan"
    assert judge(threshold, [(60, 5.0)], 60) == Verdict("breached", 5.0)
    zscore = spec(kind="zscore", window="1h")
    assert judge(zscore, [(t, 1.0) for t in range(0, 600, 60)], 540).why == "short_history"


def test_min_delta_ignores_small_moves_on_a_flat_line() -> None:
    flat = [(60.0 * i, 1.0) for i in range(20)] + [(1200.0, 1.01)]
    assert judge(spec(kind="zscore", window="1h"), flat, 1200).level == "breached"
    assert judge(spec(kind="zscore", window="1h", min_delta=0.1), flat, 1200).level == "healthy"


def test_the_baseline_leaves_out_the_anomaly_being_judged() -> None:
    samples = [(60.0 * i, 1.0 + (i % 2) * 0.01) for i in range(30)]
    samples += [(60.0 * i, 9.0) for i in range(30, 36)]
    ewma = spec(kind="ewma", window="1h", alpha=0.5)
    assert judge(ewma, samples, 35 * 60).level == "healthy"  # it has learnt the spike
    assert judge(ewma, samples, 35 * 60, anomalous_since=30 * 60).level == "breached"


def test_a_forecast_predicts_within_the_horizon_only() -> None:
    climb = [(60.0 * i, 0.5 + 0.01 * i) for i in range(20)]  # reaches 0.9 at minute 40
    soon = spec(kind="forecast", threshold=0.9, window="30m", horizon="30m")
    later = spec(kind="forecast", threshold=0.9, window="30m", horizon="10m")
    verdict = judge(soon, climb, 19 * 60)
    assert verdict.level == "predicted"
    assert verdict.crossing_at == pytest.approx(40 * 60)
    assert judge(later, climb, 19 * 60).level == "healthy"
    assert judge(soon, [*climb, (1200.0, 0.95)], 1200).level == "breached"
