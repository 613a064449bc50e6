"""Statistics of one series around an onset, for a model to read instead of raw samples:
before and after it (n, mean, min, max, last), the relative change of the mean, and the
least-squares slope per minute. Shared by `prometheus_range` and `service_signals`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

Point = tuple[float, float]  # (unix seconds, value)


def sample_value(raw: str) -> float | None:
    """A Prometheus sample's value; NaN and infinities are no value."""
    value = float(raw)
    return None if math.isnan(value) or math.isinf(value) else value


def points_of(values: Sequence[Sequence[Any]]) -> list[Point]:
    """A range query's `values` ([[t, "v"], ...]) as points, without NaN and infinities."""
    return [(float(t), v) for t, raw in values if (v := sample_value(raw)) is not None]


def split_at(points: Sequence[Point], onset: datetime) -> tuple[list[Point], list[Point]]:
    """Points before the onset, and from it on."""
    cut = onset.timestamp()
    return [p for p in points if p[0] < cut], [p for p in points if p[0] >= cut]


def stats(points: Sequence[Point]) -> dict[str, float | int] | None:
    if not points:
        return None
    values = [v for _, v in points]
    return {
        "n": len(values),
        "mean": tidy(statistics.fmean(values)),
        "min": tidy(min(values)),
        "max": tidy(max(values)),
        "last": tidy(values[-1]),
    }


def change(before: Sequence[Point], after: Sequence[Point]) -> float | None:
    """(mean after - mean before) / |mean before|; None when either side is empty or the
    mean before is 0 (any rise from nothing is infinitely large: the stats show it)."""
    if not before or not after:
        return None
    mean_before = statistics.fmean(v for _, v in before)
    mean_after = statistics.fmean(v for _, v in after)
    if mean_before == 0:
        return 0.0 if mean_after == 0 else None
    return round((mean_after - mean_before) / abs(mean_before), 4)


def slope_per_minute(points: Sequence[Point]) -> float | None:
    """The least-squares slope in value per minute (a leak climbs steadily); None for fewer
    than two points."""
    if len(points) < 2:
        return None
    xs = [t / 60 for t, _ in points]
    ys = [v for _, v in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return tidy(sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread)


def around(points: Sequence[Point], onset: datetime) -> dict[str, Any]:
    """Before and after the onset, and how the mean changed."""
    before, after = split_at(points, onset)
    return {"before": stats(before), "after": stats(after), "change": change(before, after)}


def since(points: Sequence[Point], step: float) -> float | None:
    """When the latest unbroken run of points began (unix seconds): for a rule's condition,
    which has a value only while it holds, when it began to hold. A gap wider than 1.5 steps
    breaks a run; None without points."""
    if not points:
        return None
    began = points[-1][0]
    for earlier, later in zip(reversed(points[:-1]), reversed(points[1:]), strict=True):
        if later[0] - earlier[0] > 1.5 * step:
            break
        began = earlier[0]
    return began


def auto_step(start: datetime, onset: datetime, now: datetime, max_points: int) -> float:
    """A range query's step (seconds): fine enough for ten points from the onset to `now`
    (an alert is investigated minutes after its condition began), at most a minute, at least
    a second, and never more than `max_points` points over the whole window."""
    wanted = min(60.0, max(1.0, (now - onset).total_seconds() / 10))
    return max(wanted, (now - start).total_seconds() / max_points)


def tidy(value: float) -> float:
    """Nine significant digits: enough to read, without float noise (0.30000000000000004)."""
    return float(f"{value:.9g}")
