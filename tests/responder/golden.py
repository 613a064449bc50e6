"""Two hours of a service's golden signals, one sample a minute from T0, shaped so every
statistic `service_signals` tells can be worked out by hand.

From ONSET, checkout answers 20% of its requests with 500 (1% before) and those take 0.5-1 s,
one of its two scrape targets is down, and its memory climbs 1 MiB a minute throughout (a
leak). Traffic and CPU stay flat. Restarts are not planted at all. Two more services have
names an attacker would write into an alert's labels.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

T0 = 1_600_000_020  # a whole minute, long before anything real
STEP = 60
MINUTES = 120
ONSET = 60  # minute
NOW = 90  # the investigation's now: the samples after it must not be seen
MIB = 1_048_576
MEMORY_BASE = 100_000_000.0

Series = tuple[str, dict[str, str], list[tuple[int, float]]]
HOSTILE = ('checkout"} or vector(1) #', "back\\slash")  # each serves 1 request/s, no more


def minute(i: int) -> datetime:
    return datetime.fromtimestamp(T0 + i * STEP, UTC)


def _counter(per_minute: Callable[[int], float]) -> list[tuple[int, float]]:
    """A counter whose increase over the minute ending at minute i is per_minute(i)."""
    total, samples = 0.0, []
    for i in range(MINUTES):
        total += per_minute(i) if i else 0.0
        samples.append((T0 + i * STEP, total))
    return samples


def _gauge(value_at: Callable[[int], float]) -> list[tuple[int, float]]:
    return [(T0 + i * STEP, value_at(i)) for i in range(MINUTES)]


def after(i: int) -> bool:
    """The minute ending at i is after the onset."""
    return i > ONSET


def memory(i: int) -> float:
    return MEMORY_BASE + MIB * i


def series() -> list[Series]:
    checkout = {"service": "checkout"}
    ok = _counter(lambda i: 480.0 if after(i) else 594.0)  # 8/s after, 9.9/s before
    failed = _counter(lambda i: 120.0 if after(i) else 6.0)  # 2/s after, 0.1/s before
    everything = _counter(lambda i: 600.0)

    def slow_share(i: int) -> float:  # requests done in more than 0.5 s: the failed ones
        return 120.0 if after(i) else 0.0

    fast = _counter(lambda i: 600.0 - slow_share(i))
    return [
        ("http_requests_total", {**checkout, "code": "200"}, ok),
        ("http_requests_total", {**checkout, "code": "500"}, failed),
        *[("http_requests_total", {"service": s, "code": "200"}, _counter(lambda i: 60.0))
          for s in HOSTILE],
        ("http_request_duration_seconds_bucket", {**checkout, "le": "0.1"}, fast),
        ("http_request_duration_seconds_bucket", {**checkout, "le": "0.5"}, fast),
        ("http_request_duration_seconds_bucket", {**checkout, "le": "1"}, everything),
        ("http_request_duration_seconds_bucket", {**checkout, "le": "+Inf"}, everything),
        ("process_cpu_seconds_total", checkout, _counter(lambda i: 30.0)),  # half a core
        ("process_resident_memory_bytes", checkout, _gauge(memory)),
        ("up", {**checkout, "instance": "a"}, _gauge(lambda i: 1.0)),
        ("up", {**checkout, "instance": "b"}, _gauge(lambda i: 0.0 if i >= ONSET else 1.0)),
    ]  # fmt: skip
