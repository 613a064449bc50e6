"""The detectors' arithmetic: pure functions over a window of finite samples.

A score is "how many deviations is `x` away from what the history expects"; it is signed
(positive: above). A history with no spread at all gives +/-inf for any move and 0 for none,
so a flat line that jumps is an anomaly; `min_delta` in the rules is how a user says that a
jump that small is not one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Scales the MAD to the standard deviation of a normal distribution (Iglewicz and Hoaglin).
MAD_TO_SIGMA = 1.4826


def _score(delta: float, spread: float, centre: float) -> float:
    # Differences below float rounding of the centre are noise of the arithmetic, not of the
    # series: a flat line at 86.2 must not get a spread of 1e-14 and turn 0 into -1 sigma.
    tolerance = 1e-9 * abs(centre)
    spread = 0.0 if spread <= tolerance else spread
    delta = 0.0 if abs(delta) <= tolerance else delta
    if spread > 0:
        return delta / spread
    if delta == 0:
        return 0.0
    return math.copysign(math.inf, delta)


def zscore(history: Sequence[float], x: float) -> float:
    """Distance of `x` from the window's mean, in standard deviations."""
    mean = statistics.fmean(history)
    return _score(x - mean, statistics.pstdev(history, mean), mean)


def robust_zscore(history: Sequence[float], x: float) -> float:
    """Distance of `x` from the window's median, in MADs scaled to a standard deviation."""
    median = statistics.median(history)
    mad = statistics.median(abs(v - median) for v in history)
    return _score(x - median, MAD_TO_SIGMA * mad, median)


def ewma(history: Sequence[float], alpha: float) -> tuple[float, float]:
    """Exponentially weighted mean and variance of the history, oldest first."""
    mean, var = history[0], 0.0
    for v in history[1:]:
        delta = v - mean
        mean += alpha * delta
        var = (1 - alpha) * (var + alpha * delta * delta)
    return mean, var


def ewma_zscore(history: Sequence[float], x: float, alpha: float) -> float:
    mean, var = ewma(history, alpha)
    return _score(x - mean, math.sqrt(var), mean)


def expected(history: Sequence[float], kind: str, alpha: float = 0.3) -> float:
    """The centre `x` is compared with, for the `min_delta` check."""
    if kind == "robust_zscore":
        return statistics.median(history)
    if kind == "ewma":
        return ewma(history, alpha)[0]
    return statistics.fmean(history)


def breaches(score: float, z: float, sides: str) -> bool:
    if sides == "above":
        return score > z
    if sides == "below":
        return score < -z
    return abs(score) > z


def linear_fit(times: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of values over times (at least two distinct times)."""
    mt, mv = statistics.fmean(times), statistics.fmean(values)
    sxx = sum((t - mt) ** 2 for t in times)
    if sxx == 0:
        raise ValueError("a line needs at least two distinct times")
    slope = sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / sxx
    return slope, mv - slope * mt


def crossing_time(
    times: Sequence[float], values: Sequence[float], threshold: float, direction: str
) -> float | None:
    """When the fitted line reaches `threshold` heading `direction`, or None if it never will.

    The answer can lie in the past (the line is already past the threshold); callers compare
    it with now and the horizon.
    """
    slope, intercept = linear_fit(times, values)
    heading = slope > 0 if direction == "above" else slope < 0
    if not heading:
        return None
    return (threshold - intercept) / slope


def past(value: float, threshold: float, direction: str) -> bool:
    """Whether `value` is on the wrong side of a threshold (strictly, as Prometheus' `>`)."""
    return value > threshold if direction == "above" else value < threshold
