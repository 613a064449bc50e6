"""Did every 2xx reach the stream? Vigil's counters and VIGIL_EVENTS around one wrk run.

Vigil answers 2xx only after JetStream acked every event of the request, so the events the
stream gains must be the alerts of every request Vigil answered 2xx, and those at least the
ones wrk counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import WrkRun
from eventlog.stream import EVENTS_STREAM

SETTLE_QUIET = 0.5  # seconds without a new event in the stream: the server has finished


@dataclass(frozen=True)
class Tally:
    """Vigil's own counters (GET /metrics) and the events in its stream, at one moment."""

    answered_2xx: float  # vigil_webhook_requests_total{status="200"}
    stored: float  # vigil_webhook_alerts_total{outcome="stored"}
    events: int  # messages in VIGIL_EVENTS

    def __sub__(self, earlier: Tally) -> Tally:
        return Tally(
            self.answered_2xx - earlier.answered_2xx,
            self.stored - earlier.stored,
            self.events - earlier.events,
        )


@dataclass(frozen=True)
class Ingest:
    """One wrk run against Vigil, and what the server and the stream gained meanwhile."""

    run: WrkRun
    gained: Tally
    projector_lag: int  # events not yet projected when wrk stopped
    expect_new: bool = True  # False for the duplicate path: nothing new should be stored

    @property
    def in_flight(self) -> float:
        """Requests Vigil answered 2xx that wrk did not count: wrk stops with up to one request
        per connection in flight, and the server still finishes (and stores) those."""
        return self.gained.answered_2xx - self.run.ok

    @property
    def problems(self) -> list[str]:
        """wrk's problems, and any gap between the 2xx answers and the events in the stream."""
        found = self.run.problems
        g, per_request = self.gained, self.run.alerts_per_request
        if g.events != g.stored:
            found.append(f"the stream gained {g.events} events, Vigil says it stored {g.stored:g}")
        if not 0 <= self.in_flight <= self.run.connections:
            found.append(f"Vigil answered {g.answered_2xx:g} requests 2xx, wrk saw {self.run.ok}")
        if g.stored != (g.answered_2xx * per_request if self.expect_new else 0):
            found.append(f"{g.stored:g} alerts stored for {g.answered_2xx:g} requests answered")
        return found


async def settled_tally(js: JetStreamContext, url: str) -> Tally:
    """Vigil's counters and the stream, once nothing is added and the projector caught up."""
    events = await settled_count(js)
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.get("/metrics")
    answer.raise_for_status()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    return Tally(
        samples.get(("vigil_webhook_requests_total", (("status", "200"),)), 0.0),
        samples.get(("vigil_webhook_alerts_total", (("outcome", "stored"),)), 0.0),
        events,
    )


async def settled_count(js: JetStreamContext) -> int:
    """Events in the stream once nothing is being added and the projector has caught up.

    There is no event to await in another process: the count is read until it holds still for
    SETTLE_QUIET, so requests still in flight when wrk stopped are counted, and the projector
    no longer competes with the next run."""
    count, since = -1, time.monotonic()
    while True:
        now = (await js.stream_info(EVENTS_STREAM)).state.messages
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_QUIET and await projector_lag(js) == 0:
            return count
        await asyncio.sleep(0.05)


async def projector_lag(js: JetStreamContext) -> int:
    infos = await js.consumers_info(EVENTS_STREAM)
    return sum(i.num_pending + i.num_ack_pending for i in infos)
