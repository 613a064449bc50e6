"""One series at one evaluation time, judged by the rule's detector: the poll's verdict.

A verdict of `no_data` (the latest sample is missing or NaN, or the history is too short to
say) is not a breach and not healthy: it leaves the series' hysteresis where it was, so a
gap can neither fire nor resolve an anomaly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from detector import algorithms
from detector.rules import DetectorSpec, ForecastDetector, ThresholdDetector

Level = Literal["no_data", "healthy", "predicted", "breached"]
NoDataReason = Literal["stale", "nan", "short_history"]
Sample = tuple[float, float]  # unix seconds, value


@dataclass(frozen=True)
class Verdict:
    level: Level
    value: float | None = None
    crossing_at: float | None = None  # forecast: unix seconds of the predicted crossing
    why: NoDataReason | None = None


def no_data(why: NoDataReason) -> Verdict:
    return Verdict("no_data", why=why)


def judge(
    spec: DetectorSpec, samples: Sequence[Sample], at: float, anomalous_since: float | None = None
) -> Verdict:
    """The verdict on the sample at `at`, given the samples before it (oldest first).

    `anomalous_since` is when the series' current anomalous stretch began: a statistical
    baseline leaves those samples out, so a spike does not become its own normal (an EWMA
    would otherwise call the third minute of a spike healthy). Once the stretch outlasts the
    window it is the new normal, and the whole window is the baseline again.
    """
    if not samples or samples[-1][0] != at:
        return no_data("stale")  # Prometheus had no sample within its lookback of `at`
    x = samples[-1][1]
    if not math.isfinite(x):
        return no_data("nan")
    if isinstance(spec, ThresholdDetector):
        return _level(algorithms.past(x, spec.threshold, spec.direction), x)
    if isinstance(spec, ForecastDetector):
        return _forecast(spec, samples, at)
    history = [v for t, v in samples[:-1] if math.isfinite(v)]
    if anomalous_since is not None:
        before = [v for t, v in samples[:-1] if t < anomalous_since and math.isfinite(v)]
        history = before if len(before) >= spec.min_samples else history
    if len(history) < spec.min_samples:
        return no_data("short_history")
    if spec.kind == "zscore":
        score = algorithms.zscore(history, x)
    elif spec.kind == "robust_zscore":
        score = algorithms.robust_zscore(history, x)
    else:
        score = algorithms.ewma_zscore(history, x, spec.alpha)
    centre = algorithms.expected(history, spec.kind, getattr(spec, "alpha", 0.3))
    big_enough = abs(x - centre) >= spec.min_delta
    return _level(big_enough and algorithms.breaches(score, spec.z, spec.direction), x)


def _forecast(spec: ForecastDetector, samples: Sequence[Sample], at: float) -> Verdict:
    x = samples[-1][1]
    if algorithms.past(x, spec.threshold, spec.direction):
        return Verdict("breached", x)
    points = [(t, v) for t, v in samples if math.isfinite(v)]
    if len(points) < spec.min_samples:
        return no_data("short_history")
    times, values = zip(*points, strict=True)
    crossing = algorithms.crossing_time(times, values, spec.threshold, spec.direction)
    horizon = spec.horizon.total_seconds()
    # The line may cross "in the past" while the last sample is still on the safe side (a
    # noisy climb): the crossing is then imminent, so it counts as now.
    if crossing is not None and crossing <= at + horizon:
        return Verdict("predicted", x, crossing_at=max(crossing, at))
    return Verdict("healthy", x)


def _level(breached: bool, x: float) -> Verdict:
    return Verdict("breached" if breached else "healthy", x)
