"""The poll: query a rule, judge each series, step its hysteresis, append the events.

`Detector.evaluate(at)` is one poll of every rule at an explicit time, which is how tests
walk through backfilled history; `run_detector` calls it on each rule's interval grid.
Nothing a poll meets outside (Prometheus down, a bad query, NaN, no series, NATS down) ends
the loop: it is logged, counted, and judged as no verdict at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from prometheus_client import REGISTRY, CollectorRegistry

from detector import hysteresis
from detector.events import SeriesKey, change_event, series_fingerprint
from detector.hysteresis import CLOSED, SeriesState
from detector.metrics import DetectorMetrics
from detector.prometheus import PrometheusSource, QueryFailed, Series, whole_second
from detector.rules import Rule, RuleSet
from detector.state import load_open_episodes
from detector.verdicts import Verdict, judge
from eventlog.envelope import Event
from eventlog.publisher import EventPublisher, PublishError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Detector:
    """Every rule's series states, and the poll that moves them."""

    def __init__(
        self,
        rules: RuleSet,
        prometheus: PrometheusSource,
        publisher: EventPublisher,
        metrics: DetectorMetrics,
        states: dict[SeriesKey, SeriesState] | None = None,
    ) -> None:
        self.rules = rules
        self.prometheus = prometheus
        self.publisher = publisher
        self.metrics = metrics
        self.states: dict[SeriesKey, SeriesState] = {} if states is None else states
        for rule in rules.rules:
            self._count_open(rule)

    @classmethod
    async def restored(
        cls,
        js: JetStreamContext,
        rules: RuleSet,
        prometheus: PrometheusSource,
        metrics: DetectorMetrics,
    ) -> Detector:
        """A detector that knows the anomalies its earlier runs left open."""
        states = await load_open_episodes(js)
        names = {r.name for r in rules.rules}
        gone = sorted({k.rule for k in states if k.rule not in names})
        if gone:
            log.warning("open anomalies of rules no longer in the file stay open: %s", gone)
        return cls(rules, prometheus, EventPublisher(js), metrics, states)

    async def evaluate(self, at: datetime) -> list[Event]:
        """One poll of every rule at `at`; returns the events appended."""
        batches = await asyncio.gather(*(self.evaluate_rule(r, at) for r in self.rules.rules))
        return [e for batch in batches for e in batch]

    async def evaluate_rule(self, rule: Rule, at: datetime) -> list[Event]:
        """One poll of one rule at `at` (whole seconds); returns the events appended."""
        at = whole_second(at)
        series = await self._query(rule, at)
        if series is None:
            return []
        staged: dict[SeriesKey, SeriesState] = {}
        events: list[Event] = []
        for one in series:
            key = SeriesKey(rule.name, series_fingerprint(rule.name, one.labels))
            state = self.states.get(key, CLOSED)
            since = state.anomalous_since
            verdict = judge(rule.detector, one.samples, at.timestamp(),
                            since.timestamp() if since else None)  # fmt: skip
            if verdict.why:
                self.metrics.no_data.labels(rule.name, verdict.why).inc()
            state, changes = hysteresis.step(
                state, verdict.level, at,
                fire_after=rule.for_polls, resolve_after=rule.resolve_polls,
            )  # fmt: skip
            staged[key] = state
            events += [self._event(rule, one, c, verdict) for c in changes]
        if not await self._publish(rule, events):
            return []  # states stay as they were: the next poll emits the same events again
        for key, state in staged.items():
            if state == CLOSED:
                self.states.pop(key, None)
            else:
                self.states[key] = state
        self._count_open(rule)
        return events

    async def _query(self, rule: Rule, at: datetime) -> list[Series] | None:
        started = time.monotonic()
        try:
            series = await self.prometheus.query_range(rule.query, at, rule.span, rule.resolution)
        except QueryFailed as exc:
            log.warning("rule %s: query at %s failed: %s", rule.name, at.isoformat(), exc)
            self.metrics.polls.labels(rule.name, exc.reason).inc()
            return None
        self.metrics.query_seconds.labels(rule.name).observe(time.monotonic() - started)
        self.metrics.polls.labels(rule.name, "ok").inc()
        if not series:
            log.info("rule %s: no series at %s", rule.name, at.isoformat())
            self.metrics.no_data.labels(rule.name, "empty").inc()
        return series

    def _event(self, rule: Rule, series: Series, change: hysteresis.Change, v: Verdict) -> Event:
        return change_event(rule, series.labels, change, v, prometheus_url=self.prometheus.url)

    async def _publish(self, rule: Rule, events: list[Event]) -> bool:
        if not events:
            return True
        try:
            await self.publisher.publish_many(events)
        except PublishError as exc:
            log.warning("rule %s: %s; retrying on the next poll", rule.name, exc)
            self.metrics.publish_failures.labels(rule.name).inc()
            return False
        for event in events:
            self.metrics.events.labels(rule.name, event.type).inc()
            log.info("rule %s: %s %s (incident %s)", rule.name, event.type,
                     event.data.fingerprint, event.incident_id)  # type: ignore[attr-defined]  # fmt: skip
        return True

    def _count_open(self, rule: Rule) -> None:
        n = sum(1 for k, s in self.states.items() if k.rule == rule.name and s.open)
        self.metrics.open_episodes.labels(rule.name).set(n)


def grid_time(now: datetime, interval: timedelta) -> datetime:
    """`now` floored to the rule's interval: polls land on the same instants across restarts
    and replicas, so what they emit has the same ids."""
    step = interval.total_seconds()
    return datetime.fromtimestamp(int(now.timestamp() // step * step), UTC)


async def run_detector(
    js: JetStreamContext,
    prometheus_url: str,
    rules: RuleSet,
    stop: asyncio.Event,
    *,
    registry: CollectorRegistry = REGISTRY,
    now: Clock = utc_now,
    query_timeout: float = 10.0,
) -> None:
    """Poll every rule on its interval until `stop` is set; open anomalies survive a restart."""
    prometheus = PrometheusSource(prometheus_url, timeout=query_timeout)
    try:
        detector = await Detector.restored(js, rules, prometheus, DetectorMetrics(registry))
        log.info("detector: %d rules, %d open anomalies, Prometheus at %s",
                 len(rules.rules), len(detector.states), prometheus_url)  # fmt: skip
        async with asyncio.TaskGroup() as tasks:
            for rule in rules.rules:
                tasks.create_task(_poll_forever(detector, rule, stop, now))
    finally:
        prometheus.close()


async def _poll_forever(detector: Detector, rule: Rule, stop: asyncio.Event, now: Clock) -> None:
    last: datetime | None = None
    while not stop.is_set():
        at = grid_time(now(), rule.interval)
        if at != last:  # a clock that did not move to the next grid point: nothing to do yet
            try:
                await detector.evaluate_rule(rule, at)
            except Exception:
                # A bug met by one rule must not blind the others: said loudly, counted, and
                # the rule is polled again on its next interval.
                log.exception("rule %s: poll at %s failed", rule.name, at.isoformat())
                detector.metrics.polls.labels(rule.name, "internal_error").inc()
            last = at
        wait = (at + rule.interval - now()).total_seconds()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(wait, 0.05))
