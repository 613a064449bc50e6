"""The figures /metrics adds: the stream, its durable consumers, and the read model's counts.

A custom prometheus-client Collector yields metric families from a snapshot (`OpsSnapshot`),
which is refreshed on the event loop before each scrape: JetStream's stream and consumer info,
and three aggregate queries of the read model over NATS. Each source is bounded by
SCRAPE_TIMEOUT; one that does not answer is left out of the scrape and says so in
`vigil_scrape_source_up{source}` (0), so a slow projector never hangs Prometheus and a stale
figure is never served as fresh.

Exposed (times in seconds):
- `vigil_events_published_total{stream}`: events ever appended (the stream's last sequence);
  `vigil_stream_messages{stream}`: events it holds now.
- per durable consumer (`consumer` = its durable name: the role, e.g. `investigator`,
  `tool-workers`, `saga`, `projector-<db>`): `vigil_events_consumed_total` (deliveries
  acknowledged, up to the ack floor), `vigil_consumer_delivered_total` (deliveries, a
  redelivery counted again), `vigil_consumer_pending_messages` (matching events not delivered
  yet: the lag), `vigil_consumer_ack_pending_messages` (delivered, not acknowledged yet),
  `vigil_consumer_redelivered_messages`.
- `vigil_investigations{outcome}` (running|concluded|partial) and `vigil_sagas{outcome}`
  (the `remediations` view's outcome: worked, unverified, dry_run, compensated, rejected,
  escalated, in_progress): how many the read model holds.
- `vigil_tool_call_duration_seconds{tool}`: a histogram of finished tool calls' durations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import ConsumerInfo
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from eventlog.sql import QueryResult, SqlError
from eventlog.sql_service import request_read_model
from eventlog.stream import DEAD_LETTER_STREAM, EVENTS_STREAM

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT = 2.0  # seconds each source may take before the scrape goes on without it
TOOL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
INVESTIGATION_OUTCOMES = ("running", "concluded", "partial")
SAGA_OUTCOMES = ("worked", "unverified", "dry_run", "compensated", "rejected", "escalated",
                 "in_progress")  # fmt: skip
STREAMS = (EVENTS_STREAM, DEAD_LETTER_STREAM)

INVESTIGATIONS_SQL = "SELECT status, count(*) FROM investigations GROUP BY 1 ORDER BY 1"
SAGAS_SQL = "SELECT outcome, count(*) FROM remediations GROUP BY 1 ORDER BY 1"
TOOLS_SQL = (
    "SELECT tool_name, count(*), coalesce(sum(duration_ms), 0) / 1000.0, "
    + ", ".join(f"count(*) FILTER (WHERE duration_ms <= {le * 1000:g})" for le in TOOL_BUCKETS)
    + " FROM tool_calls WHERE duration_ms IS NOT NULL GROUP BY 1 ORDER BY 1"
)


@dataclass(frozen=True)
class StreamFigures:
    stream: str
    messages: int
    last_seq: int


@dataclass(frozen=True)
class ConsumerFigures:
    stream: str
    consumer: str
    acked: int
    delivered: int
    pending: int
    ack_pending: int
    redelivered: int


@dataclass(frozen=True)
class ToolLatency:
    tool: str
    count: int
    sum_seconds: float
    cumulative: tuple[int, ...]  # calls within each of TOOL_BUCKETS


@dataclass
class Figures:
    """What the last refresh found; None where its source did not answer."""

    streams: list[StreamFigures] | None = None
    consumers: list[ConsumerFigures] | None = None
    investigations: dict[str, int] | None = None
    sagas: dict[str, int] | None = None
    tools: list[ToolLatency] | None = None
    up: dict[str, bool] = field(default_factory=lambda: {"nats": False, "read_model": False})


class OpsSnapshot:
    """The figures of the last scrape; `refresh` gathers them anew (within SCRAPE_TIMEOUT)."""

    def __init__(self, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.timeout = timeout
        self.figures = Figures()
        self._lock = asyncio.Lock()  # scrapes at once refresh one after the other

    async def refresh(self, nc: NATS) -> None:
        async with self._lock:
            figures = Figures()
            await asyncio.gather(self._bus(nc, figures), self._read_model(nc, figures))
            self.figures = figures

    async def _bus(self, nc: NATS, figures: Figures) -> None:
        js = nc.jetstream()
        try:
            async with asyncio.timeout(self.timeout):
                streams, consumers = [], []
                for name in STREAMS:
                    try:
                        state = (await js.stream_info(name)).state
                    except NotFoundError:  # not made yet: nothing to tell of it
                        continue
                    streams.append(StreamFigures(name, state.messages, state.last_seq))
                    for info in await js.consumers_info(name):
                        if info.config.durable_name:  # not a reader's throwaway consumer
                            consumers.append(_consumer(name, info))
        except (TimeoutError, NatsError, JetStreamError) as exc:
            log.warning("metrics: JetStream did not tell its figures: %r", exc)
            return
        figures.streams, figures.consumers = streams, consumers
        figures.up["nats"] = True

    async def _read_model(self, nc: NATS, figures: Figures) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                investigations, sagas, tools = await asyncio.gather(
                    *(self._ask(nc, sql) for sql in (INVESTIGATIONS_SQL, SAGAS_SQL, TOOLS_SQL))
                )
        except (TimeoutError, SqlError, NatsError) as exc:
            log.warning("metrics: the read model did not tell its figures: %s", exc)
            return
        figures.investigations = _counts(investigations, INVESTIGATION_OUTCOMES)
        figures.sagas = _counts(sagas, SAGA_OUTCOMES)
        figures.tools = [
            ToolLatency(str(r[0]), int(r[1]), float(r[2]), tuple(int(c) for c in r[3:]))
            for r in tools.rows
        ]
        figures.up["read_model"] = True

    async def _ask(self, nc: NATS, sql: str) -> QueryResult:
        return await request_read_model(nc, sql, max_rows=10_000, timeout=self.timeout)


def _consumer(stream: str, info: ConsumerInfo) -> ConsumerFigures:
    return ConsumerFigures(
        stream=stream, consumer=info.config.durable_name or info.name,
        acked=info.ack_floor.consumer_seq if info.ack_floor else 0,
        delivered=info.delivered.consumer_seq if info.delivered else 0,
        pending=info.num_pending or 0, ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
    )  # fmt: skip


def _counts(result: QueryResult, known: tuple[str, ...]) -> dict[str, int]:
    """Every known outcome (0 when none), and any other the read model names."""
    counts = dict.fromkeys(known, 0)
    counts.update({str(row[0]): int(row[1]) for row in result.rows})
    return counts


class OpsCollector(Collector):
    """Yields the snapshot's figures as metric families (see the module's docstring)."""

    def __init__(self, snapshot: OpsSnapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(_families(Figures()))

    def collect(self) -> Iterator[Metric]:
        return iter(_families(self.snapshot.figures))


def _families(f: Figures) -> list[Metric]:
    up = GaugeMetricFamily("vigil_scrape_source_up", "1 if the source answered this scrape",
                           labels=["source"])  # fmt: skip
    for source, answered in f.up.items():
        up.add_metric([source], 1.0 if answered else 0.0)
    return [up, *_bus_families(f), *_read_model_families(f)]


def _bus_families(f: Figures) -> list[Metric]:
    published = CounterMetricFamily("vigil_events_published", "events appended to the stream "
                                    "(its last sequence)", labels=["stream"])  # fmt: skip
    held = GaugeMetricFamily("vigil_stream_messages", "events the stream holds", labels=["stream"])
    for s in f.streams or []:
        published.add_metric([s.stream], s.last_seq)
        held.add_metric([s.stream], s.messages)
    labels = ["stream", "consumer"]
    consumer_families = {
        "acked": CounterMetricFamily("vigil_events_consumed", "deliveries a durable consumer "
                                     "acknowledged (up to its ack floor)", labels=labels),
        "delivered": CounterMetricFamily("vigil_consumer_delivered", "deliveries to a durable "
                                         "consumer, redeliveries included", labels=labels),
        "pending": GaugeMetricFamily("vigil_consumer_pending_messages", "events for a durable "
                                     "consumer not delivered yet (its lag)", labels=labels),
        "ack_pending": GaugeMetricFamily("vigil_consumer_ack_pending_messages", "events "
                                         "delivered, not acknowledged yet", labels=labels),
        "redelivered": GaugeMetricFamily("vigil_consumer_redelivered_messages", "events "
                                         "delivered more than once, not acknowledged yet",
                                         labels=labels),
    }  # fmt: skip
    for c in f.consumers or []:
        for attr, family in consumer_families.items():
            family.add_metric([c.stream, c.consumer], getattr(c, attr))
    return [published, held, *consumer_families.values()]


def _read_model_families(f: Figures) -> list[Metric]:
    investigations = GaugeMetricFamily("vigil_investigations", "investigation attempts in the "
                                       "read model, by outcome", labels=["outcome"])  # fmt: skip
    for outcome, n in (f.investigations or {}).items():
        investigations.add_metric([outcome], n)
    sagas = GaugeMetricFamily("vigil_sagas", "sagas (remediation plans) in the read model, by "
                              "outcome", labels=["outcome"])  # fmt: skip
    for outcome, n in (f.sagas or {}).items():
        sagas.add_metric([outcome], n)
    tools = HistogramMetricFamily("vigil_tool_call_duration_seconds", "how long finished tool "
                                  "calls took, by tool", labels=["tool"])  # fmt: skip
    for t in f.tools or []:
        buckets = [
            (floatToGoString(le), c) for le, c in zip(TOOL_BUCKETS, t.cumulative, strict=True)
        ]
        tools.add_metric([t.tool], [*buckets, ("+Inf", t.count)], sum_value=t.sum_seconds)
    return [investigations, sagas, tools]
