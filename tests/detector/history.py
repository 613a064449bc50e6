"""Four hours of backfilled metrics with known moments, one sample a minute from T0.

Noise is uniform and small, so a statistical detector never breaches on it: every event a
test sees comes from a moment planted here.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

T0 = 1_699_999_980  # a whole minute, long enough ago that nothing real is ever there
STEP = 60
MINUTES = 240

SPIKE_FROM, SPIKE_TO = 150, 155  # checkout latency is 2s in minutes [150, 155)
CROSSING = 200  # the disk climbs through 0.9 at minute 200
FLAP_FROM = 100
# Queue depth above 100 (B) or not (H), a minute each from FLAP_FROM; with for_polls=3 and
# resolve_polls=3 it fires at minute 105 (started 103) and resolves at 113 (healthy since 111).
FLAPS = "BBHBBBHBHHBHHH" + "H" * 10 + "BBHBBHBH"
FLAP_STARTS, FLAP_ENDS = 103, 111


def minute(i: int) -> datetime:
    return datetime.fromtimestamp(T0 + i * STEP, UTC)


def _series(value_at) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    return [(T0 + i * STEP, value_at(i)) for i in range(MINUTES)]


def metrics() -> list[tuple[str, dict[str, str], list[tuple[int, float]]]]:
    rnd = random.Random(9)

    def noise(amplitude: float) -> float:
        return round(rnd.uniform(-amplitude, amplitude), 6)

    def latency(i: int) -> float:
        return 2.0 if SPIKE_FROM <= i < SPIKE_TO else 0.2 + noise(0.01)

    def disk(i: int) -> float:
        return round(0.4 + 0.0025 * i, 6) + noise(0.002)

    def queue(i: int) -> float:
        k = i - FLAP_FROM
        breach = 0 <= k < len(FLAPS) and FLAPS[k] == "B"
        return 130.0 + noise(5) if breach else 50.0 + noise(5)

    return [
        ("app_latency_seconds", {"service": "checkout"}, _series(latency)),
        ("app_latency_seconds", {"service": "search"}, _series(lambda i: 0.3 + noise(0.01))),
        ("disk_used_ratio", {"service": "db", "mountpoint": "/data"}, _series(disk)),
        ("queue_depth", {"service": "worker"}, _series(queue)),
        ("broken_ratio", {"service": "nan"}, _series(lambda i: math.nan)),
    ]
