"""The simulator behind `tests/scenarios/generate.py`: services with a daily traffic cycle and
seeded noise, the effects an incident has on them, per-minute samples in Vigil's metric
conventions (docs/tools.md), and the alert rules evaluated on those samples the way
Prometheus 2.x evaluates them (5-minute `rate` with its extrapolation, `histogram_quantile`,
the 5-minute lookback of instant selectors, a rule's `for`).

Units: time in minutes from the window's start unless a name says otherwise; latency in
seconds; traffic in requests per second; CPU in cores; memory in bytes.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

Curve = Callable[[int], float]
"""A value for each minute of the window."""

LE: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
"""Histogram bucket bounds, seconds."""
FAST_FAIL_SECONDS = 0.015
"""Median latency of a request that fails fast (a refused connection, an exception)."""
LOOKBACK_MINUTES = 5
"""Prometheus's lookback for instant vector selectors (no staleness markers in a backfill)."""


def ramp(t0: float, t1: float, end: float | None = None, fall: float = 0.0) -> Curve:
    """0 before minute `t0`, rising linearly to 1 at `t1`, 1 until `end`, then back to 0
    over `fall` minutes (never, without `end`)."""

    def curve(t: int) -> float:
        if t < t0:
            return 0.0
        up = 1.0 if t >= t1 else (t - t0 + 1) / (t1 - t0 + 1)
        if end is None or t < end:
            return up
        return max(0.0, 1.0 - (t - end + 1) / (fall + 1)) if fall else 0.0

    return curve


def scaled(k: float, shape: Curve) -> Curve:
    """`k` times the shape (an additive effect)."""
    return lambda t: k * shape(t)


def factor(k: float, shape: Curve) -> Curve:
    """A multiplier: 1 where the shape is 0, `k` where it is 1."""
    return lambda t: 1.0 + (k - 1.0) * shape(t)


def oom_sawtooth(start_extra: float, per_minute: float, restarts: list[int]) -> Curve:
    """A leak: `start_extra` bytes above the baseline at minute 0, `per_minute` bytes more
    each minute, back to 0 after each restart minute."""

    def curve(t: int) -> float:
        before = [r for r in restarts if r <= t]
        if not before:
            return start_extra + per_minute * t
        return per_minute * (t - before[-1])

    return curve


@dataclass(frozen=True)
class Service:
    """A service's baseline at the daily mean."""

    name: str
    instances: int
    rps: float
    """requests (queries, for a database) per second over all instances"""
    latency: float
    """median seconds of a successful request"""
    sigma: float = 0.55
    """lognormal spread of latency"""
    error_ratio: float = 0.002
    """baseline share of requests answered 500"""
    cpu_idle: float = 0.05
    """cores per instance with no traffic"""
    cpu_per_request: float = 0.004
    """core-seconds per request"""
    cpu_limit: float = 2.0
    """cores one instance can use at most"""
    memory: float = 300e6
    """resident bytes per instance"""
    owner: str = "team-shop"
    depends_on: tuple[str, ...] = ()


@dataclass
class Instance:
    """One scrape target: metrics from `first` to `last` (minutes, inclusive); `up` is 0 from
    `down_at` to `gone_at` (exclusive: the target is dropped from discovery then)."""

    name: str
    first: int = 0
    last: int | None = None
    down_at: int | None = None
    gone_at: int | None = None
    restarts: list[int] = field(default_factory=list)
    memory: Curve | None = None
    """extra resident bytes above the service's baseline"""


@dataclass
class Effects:
    """What the incident does to one service: multipliers and additions, minute by minute."""

    traffic: list[Curve] = field(default_factory=list)
    """multiplies requests per second"""
    latency: list[Curve] = field(default_factory=list)
    """multiplies the median latency of successful requests"""
    spread: list[Curve] = field(default_factory=list)
    """adds to the lognormal sigma (a fatter tail)"""
    err500: list[Curve] = field(default_factory=list)
    """adds to the share answered 500"""
    err503: list[Curve] = field(default_factory=list)
    """adds to the share answered 503"""
    cpu: list[Curve] = field(default_factory=list)
    """adds cores per instance (background work)"""
    cpu_per_request: list[Curve] = field(default_factory=list)
    """multiplies core-seconds per request"""
    memory: list[Curve] = field(default_factory=list)
    """adds resident bytes per instance"""
    error_seconds: float = FAST_FAIL_SECONDS
    """median latency of failing requests (a timeout: the client's deadline)"""


def _product(curves: list[Curve], t: int) -> float:
    return math.prod(c(t) for c in curves)


def _sum(curves: list[Curve], t: int) -> float:
    return sum(c(t) for c in curves)


def _cdf(x: float, median: float, sigma: float) -> float:
    """P(latency <= x) for a lognormal latency."""
    if math.isinf(x):
        return 1.0
    return 0.5 * (1.0 + math.erf(math.log(x / median) / (sigma * math.sqrt(2.0))))


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


Labels = tuple[tuple[str, str], ...]
Samples = list[tuple[int, float]]


class Simulation:
    """One incident window: services, their instances and effects, and the samples written."""

    def __init__(self, name: str, start: datetime, duration: int, services: list[Service]):
        self.name = name
        self.start = start
        self.duration = duration
        self.services = {s.name: s for s in services}
        self.effects = {s.name: Effects() for s in services}
        self.instances = {
            s.name: [Instance(f"{s.name}-{i + 1}") for i in range(s.instances)] for s in services
        }
        self.random = random.Random(zlib.crc32(name.encode()))
        self.series: dict[str, dict[Labels, Samples]] = {}
        self.with_503: set[str] = set()

    def fx(self, service: str) -> Effects:
        return self.effects[service]

    def instance(self, service: str, index: int) -> Instance:
        return self.instances[service][index]

    def daily(self, minute: int) -> float:
        """The daily traffic cycle: 1 at the mean, 1.35 at 15:00 UTC, 0.65 at 03:00 UTC."""
        hour = (self.start.hour * 60 + self.start.minute + minute) / 60.0
        return 1.0 + 0.35 * math.cos(2 * math.pi * (hour - 15.0) / 24.0)

    def epoch(self, minute: int) -> int:
        """Seconds since 1970 of a minute of the window."""
        return int(self.start.timestamp()) + 60 * minute

    # --- samples -----------------------------------------------------------------------

    def _add(self, family: str, labels: Labels, minute: int, value: float) -> None:
        self.series.setdefault(family, {}).setdefault(labels, []).append((minute, value))

    def run(self) -> None:
        """Compute every sample of the window (one a minute), in a fixed order."""
        for name in self.services:
            self._run_service(name)

    def _run_service(self, name: str) -> None:
        svc, fx = self.services[name], self.effects[name]
        rnd = self.random
        if fx.err503 or any(i.restarts for i in self.instances[name]):
            self.with_503.add(name)
        counters: dict[str, dict[str, float]] = {}
        for inst in self.instances[name]:
            fresh = inst.first > 0  # a new pod's counters start at 0
            hours = 0.0 if fresh else rnd.uniform(0.5, 6.0)
            share = svc.rps / svc.instances * hours * 3600
            counters[inst.name] = {
                "200": share,
                "500": share * svc.error_ratio,
                "503": 0.0,
                "cpu": (svc.cpu_idle + svc.cpu_per_request * svc.rps / svc.instances)
                * hours
                * 3600,
                "restarts": float(rnd.randint(0, 2)) if not fresh else 0.0,
                **{
                    f"le{le}": share * (1 + svc.error_ratio) * _cdf(le, svc.latency, svc.sigma)
                    for le in LE
                },
            }
        for t in range(self.duration + 1):
            total = svc.rps * self.daily(t) * _product(fx.traffic, t) * rnd.gauss(1.0, 0.03)
            serving = []
            for inst in self.instances[name]:
                if not self._scraped(inst, t):
                    continue
                weight = 0.5 if t in inst.restarts else 1.0
                serving.append((inst, weight))
            weights = sum(w for _, w in serving) or 1.0
            err500 = max(0.0, svc.error_ratio * rnd.gauss(1.0, 0.25) + _sum(fx.err500, t))
            err503 = max(0.0, _sum(fx.err503, t))
            median = svc.latency * _product(fx.latency, t) * rnd.gauss(1.0, 0.03)
            sigma = svc.sigma + _sum(fx.spread, t)
            per_request = svc.cpu_per_request * _product(fx.cpu_per_request, t)
            for inst in self.instances[name]:
                self._sample_up(name, inst, t)
                if not self._scraped(inst, t):
                    continue
                weight = next(w for i, w in serving if i is inst)
                rps = total * weight / weights
                c = counters[inst.name]
                restarting = 0.25 if t in inst.restarts else 0.0
                e500 = min(err500, 1.0)
                e503 = min(err503 + restarting, 1.0 - e500)
                n = rps * 60.0
                ok, n500, n503 = n * (1 - e500 - e503), n * e500, n * e503
                c["200"] += ok
                c["500"] += n500
                c["503"] += n503
                for le in LE:
                    c[f"le{le}"] += ok * _cdf(le, median, sigma) + (n500 + n503) * _cdf(
                        le, fx.error_seconds, 0.3
                    )
                cores = svc.cpu_idle + per_request * rps + _sum(fx.cpu, t)
                cores = min(svc.cpu_limit, cores * rnd.gauss(1.0, 0.03))
                c["cpu"] += cores * 60.0
                if t in inst.restarts:
                    c["restarts"] += 1
                memory = svc.memory * rnd.gauss(1.0, 0.004) + _sum(fx.memory, t)
                if inst.memory is not None:
                    memory += inst.memory(t)
                base = (("service", name), ("instance", inst.name))
                for code in ("200", "500", "503"):
                    if code == "503" and name not in self.with_503:
                        continue
                    self._add("http_requests_total", (*base, ("code", code)), t, round(c[code]))
                for le in LE:
                    bound = "+Inf" if math.isinf(le) else f"{le:g}"
                    self._add(
                        "http_request_duration_seconds_bucket",
                        (*base, ("le", bound)),
                        t,
                        round(c[f"le{le}"]),
                    )
                self._add("process_cpu_seconds_total", base, t, round(c["cpu"]))
                self._add("process_resident_memory_bytes", base, t, _sig(memory, 3))
                self._add("kube_pod_container_status_restarts_total", base, t, c["restarts"])

    def _scraped(self, inst: Instance, t: int) -> bool:
        """Whether the target answers its scrape at minute `t`."""
        if t < inst.first or (inst.last is not None and t > inst.last):
            return False
        return inst.down_at is None or t < inst.down_at

    def _sample_up(self, name: str, inst: Instance, t: int) -> None:
        if t < inst.first or (inst.gone_at is not None and t >= inst.gone_at):
            return
        if inst.last is not None and inst.down_at is None and t > inst.last:
            return
        up = 1.0 if self._scraped(inst, t) else 0.0
        self._add("up", (("service", name), ("instance", inst.name)), t, up)

    # --- OpenMetrics ---------------------------------------------------------------------

    def openmetrics(self) -> str:
        """The samples as OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`
        (timestamps in seconds), one family after another, ending with `# EOF`."""
        families = (
            ("http_requests", "counter", "http_requests_total"),
            ("http_request_duration_seconds", "histogram", "http_request_duration_seconds_bucket"),
            ("process_cpu_seconds", "counter", "process_cpu_seconds_total"),
            ("process_resident_memory_bytes", "gauge", "process_resident_memory_bytes"),
            (
                "kube_pod_container_status_restarts",
                "counter",
                "kube_pod_container_status_restarts_total",
            ),
            ("up", "gauge", "up"),
        )
        lines: list[str] = []
        for family, kind, metric in families:
            lines.append(f"# TYPE {family} {kind}")
            for labels, samples in self.series.get(metric, {}).items():
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                for t, v in samples:
                    value = f"{v:g}" if v != int(v) or abs(v) < 1e6 else str(int(v))
                    lines.append(f"{metric}{{{text}}} {value} {self.epoch(t)}")
        return "\n".join(lines) + "\n# EOF\n"

    # --- PromQL, as Prometheus 2.x evaluates it ------------------------------------------

    def matching(self, metric: str, **match: str) -> list[tuple[Labels, Samples]]:
        """The series of `metric` whose labels equal `match` (a value `5..` matches 5xx)."""
        found = []
        for labels, samples in self.series.get(metric, {}).items():
            d = dict(labels)
            if all(
                (d.get(k, "").startswith("5") if v == "5.." else d.get(k) == v)
                for k, v in match.items()
            ):
                found.append((labels, samples))
        return found

    @staticmethod
    def increase(samples: Samples, t: int, window: int) -> float | None:
        """`increase(x[window m])` at minute `t`: Prometheus 2.x's extrapolatedRate over the
        samples in [t - window, t] (both ends included), None with fewer than two."""
        points = [(m, v) for m, v in samples if t - window <= m <= t]
        if len(points) < 2:
            return None
        result = points[-1][1] - points[0][1]
        last = 0.0
        for _, v in points:
            if v < last:
                result += last
            last = v
        to_start = (points[0][0] - (t - window)) * 60.0
        to_end = (t - points[-1][0]) * 60.0
        sampled = (points[-1][0] - points[0][0]) * 60.0
        average = sampled / (len(points) - 1)
        if result > 0 and points[0][1] >= 0:
            to_start = min(to_start, sampled * (points[0][1] / result))
        threshold = average * 1.1
        interval = sampled
        interval += to_start if to_start < threshold else average / 2
        interval += to_end if to_end < threshold else average / 2
        return result * (interval / sampled)

    def rate(self, samples: Samples, t: int, window: int = 5) -> float | None:
        """`rate(x[window m])` at minute `t`, per second."""
        inc = self.increase(samples, t, window)
        return None if inc is None else inc / (window * 60.0)

    @staticmethod
    def instant(samples: Samples, t: int) -> float | None:
        """An instant selector at minute `t`: the latest sample at most 5 minutes old."""
        before = [v for m, v in samples if t - LOOKBACK_MINUTES <= m <= t]
        return before[-1] if before else None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's `histogram_quantile` over (upper bound, cumulative count) pairs."""
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]) or len(buckets) < 2:
        return math.nan
    counts = [c for _, c in buckets]
    for i in range(1, len(counts)):  # ensureMonotonic
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i in range(len(counts)) if counts[i] >= rank or i == len(counts) - 1)
    if b == len(counts) - 1:
        return buckets[-2][0]
    start, end, count = 0.0, buckets[b][0], counts[b]
    if b > 0:
        start = buckets[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


# --- alert rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """An alerting rule: its PromQL, the same condition computed on the samples, its `for`."""

    alertname: str
    service: str
    severity: str
    summary: str
    expr: str
    holds: Callable[[Simulation, int], bool]
    for_minutes: int = 3


def _sum_rates(sim: Simulation, t: int, metric: str, **match: str) -> float | None:
    rates = [r for _, s in sim.matching(metric, **match) if (r := sim.rate(s, t)) is not None]
    return sum(rates) if rates else None


def _camel(service: str) -> str:
    return "".join(part.capitalize() for part in service.split("-"))


def error_ratio(
    service: str, threshold: float, *, for_minutes: int = 3, severity: str = "critical"
) -> Rule:
    """5xx share of the service's requests over 5 minutes above `threshold` (0.05 = 5 %)."""
    sel = f'http_requests_total{{service="{service}"'
    expr = f'sum(rate({sel},code=~"5.."}}[5m])) / sum(rate({sel}}}[5m])) > {threshold:g}'

    def holds(sim: Simulation, t: int) -> bool:
        bad = _sum_rates(sim, t, "http_requests_total", service=service, code="5..")
        every = _sum_rates(sim, t, "http_requests_total", service=service)
        return bad is not None and every is not None and every > 0 and bad / every > threshold

    summary = f"{service}: more than {threshold:.0%} of requests fail"
    name = f"{_camel(service)}HighErrorRate"
    return Rule(name, service, severity, summary, expr, holds, for_minutes)


def latency_p99(
    service: str, threshold: float, *, for_minutes: int = 3, severity: str = "critical"
) -> Rule:
    """The service's p99 latency over 5 minutes above `threshold` seconds."""
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket"
        f'{{service="{service}"}}[5m]))) > {threshold:g}'
    )

    def holds(sim: Simulation, t: int) -> bool:
        by_le: dict[float, float] = {}
        for labels, s in sim.matching("http_request_duration_seconds_bucket", service=service):
            r = sim.rate(s, t)
            if r is not None:
                le = float(dict(labels)["le"])
                by_le[le] = by_le.get(le, 0.0) + r
        value = quantile(0.99, list(by_le.items()))
        return not math.isnan(value) and value > threshold

    summary = f"{service}: p99 latency above {threshold:g}s"
    name = f"{_camel(service)}HighLatency"
    return Rule(name, service, severity, summary, expr, holds, for_minutes)


def target_down(service: str, *, for_minutes: int = 1, severity: str = "warning") -> Rule:
    """Some scrape target of the service answers no more (`up` 0)."""
    expr = f'min(up{{service="{service}"}}) == 0'

    def holds(sim: Simulation, t: int) -> bool:
        values = [
            v
            for _, s in sim.matching("up", service=service)
            if (v := sim.instant(s, t)) is not None
        ]
        return bool(values) and min(values) == 0

    summary = f"{service}: a scrape target is down"
    name = f"{_camel(service)}TargetDown"
    return Rule(name, service, severity, summary, expr, holds, for_minutes)


def restarts(
    service: str, threshold: float, *, for_minutes: int = 0, severity: str = "warning"
) -> Rule:
    """More than `threshold` container restarts of the service in 10 minutes."""
    expr = (
        "sum(increase(kube_pod_container_status_restarts_total"
        f'{{service="{service}"}}[10m])) > {threshold:g}'
    )

    def holds(sim: Simulation, t: int) -> bool:
        metric = "kube_pod_container_status_restarts_total"
        incs = [
            i for _, s in sim.matching(metric, service=service) if (i := sim.increase(s, t, 10))
        ]
        return bool(incs) and sum(incs) > threshold

    summary = f"{service}: containers restarting"
    name = f"{_camel(service)}Restarting"
    return Rule(name, service, severity, summary, expr, holds, for_minutes)


def cpu_above(
    service: str, threshold: float, *, for_minutes: int = 5, severity: str = "warning"
) -> Rule:
    """Some instance of the service uses more than `threshold` cores over 5 minutes."""
    expr = f'max(rate(process_cpu_seconds_total{{service="{service}"}}[5m])) > {threshold:g}'

    def holds(sim: Simulation, t: int) -> bool:
        rates = [
            r
            for _, s in sim.matching("process_cpu_seconds_total", service=service)
            if (r := sim.rate(s, t)) is not None
        ]
        return bool(rates) and max(rates) > threshold

    summary = f"{service}: an instance uses more than {threshold:g} cores"
    name = f"{_camel(service)}CpuHigh"
    return Rule(name, service, severity, summary, expr, holds, for_minutes)


def firing(sim: Simulation, rule: Rule, earliest: int = 5) -> tuple[int, int | None] | None:
    """When Prometheus would fire the rule (evaluated each minute from `earliest`): the first
    minute c + for such that the condition held at every minute from c to c + for; and the
    first minute after that where it no longer holds (None: firing to the window's end)."""
    held = [t >= earliest and rule.holds(sim, t) for t in range(sim.duration + 1)]
    for c in range(sim.duration + 1 - rule.for_minutes):
        if all(held[c : c + rule.for_minutes + 1]):
            start = c + rule.for_minutes
            end = next((t for t in range(start, sim.duration + 1) if not held[t]), None)
            return start, end
    return None
