"""The tool workers on a real nats-server and a real Prometheus: requests in, outcomes out,
tools in parallel, failures recorded as facts, nothing looked at past the investigation's now."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import BaseModel

from eventlog.envelope import Event, new_event
from eventlog.payloads import ChangeRecorded, ToolCompleted, ToolFailed, ToolRequested
from eventlog.publisher import EventPublisher
from responder.tools import Tool, ToolContext, ToolRegistry, ToolSettings, default_tools
from tests.detector import history
from tests.detector.prometheus_server import PrometheusServer
from tests.eventlog.stream_reading import stream_events
from tests.responder.tool_workers import Outcomes, workers

SPIKE = history.minute(history.SPIKE_FROM)  # checkout latency is 2 s for five minutes from here


async def request(js: JetStreamContext, call: str, tool: str, **fields: Any) -> Event:
    fields.setdefault("now", SPIKE + timedelta(minutes=6))
    event = new_event(ToolRequested(tool_call_id=call, tool_name=tool, **fields),
                      incident_id="inc-1", source="test")  # fmt: skip
    await EventPublisher(js).publish(event)
    return event


async def test_prometheus_tools_summarise_around_the_onset_and_never_look_past_now(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes, prometheus: PrometheusServer
) -> None:
    stop, task = await workers(nc, default_tools(), ToolSettings(prometheus_url=prometheus.url))
    try:
        latency = "app_latency_seconds"
        await request(js, "range", "prometheus_range",
                      args={"query": latency, "onset": SPIKE.isoformat()})  # fmt: skip
        await request(js, "now", "prometheus_query", args={"query": latency},
                      now=SPIKE + timedelta(minutes=2))  # fmt: skip
        await request(js, "before", "prometheus_query", args={"query": latency},
                      now=SPIKE - timedelta(minutes=2))  # fmt: skip
        ranged, during, before = await outcomes.of("range", "now", "before")
    finally:
        stop.set()
        await task
    assert isinstance(ranged, ToolCompleted), ranged
    top = ranged.result["series"][0]
    assert top["labels"] == {"__name__": latency, "service": "checkout"}
    assert top["before"]["max"] < 0.25 and top["after"]["max"] == 2.0 and top["change"] > 3
    assert ranged.result["total_series"] == 2 and ranged.duration_ms > 0
    assert isinstance(during, ToolCompleted) and isinstance(before, ToolCompleted)
    assert during.result["series"][0]["value"] == 2.0  # the spike, at its now
    assert before.result["series"][0]["value"] < 0.35  # no spike: it has not happened yet


async def test_a_conditions_range_tells_since_when_it_holds(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes, prometheus: PrometheusServer
) -> None:
    """An alert fires after its `for:`: the range of its rule's condition says when it began
    to hold (the spike's first minute), at a step fine enough for the minutes since."""
    stop, task = await workers(nc, default_tools(), ToolSettings(prometheus_url=prometheus.url))
    fired = SPIKE + timedelta(minutes=3)
    try:
        await request(js, "cond", "prometheus_range", args={"query": "app_latency_seconds > 1"},
                      onset=fired, now=fired + timedelta(minutes=1))  # fmt: skip
        await request(js, "flat", "prometheus_range", args={"query": "app_latency_seconds < 1"},
                      onset=fired, now=fired + timedelta(minutes=1))  # fmt: skip
        (held, flat) = await outcomes.of("cond", "flat")
    finally:
        stop.set()
        await task
    assert isinstance(held, ToolCompleted) and isinstance(flat, ToolCompleted)
    assert held.result["step_seconds"] == 6.0  # a tenth of the minute since the onset
    (spike,) = held.result["series"]
    assert spike["since"] == SPIKE.isoformat()
    # The opposite condition held from the window's start: for search up to now, for checkout
    # until the spike (its latest run).
    since = {s["labels"]["service"]: s["since"] for s in flat.result["series"]}
    start = (fired - timedelta(minutes=30)).isoformat()
    assert since == {"search": start, "checkout": start}


async def test_failures_are_recorded_with_their_reason(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes, prometheus: PrometheusServer
) -> None:
    stop, task = await workers(nc, default_tools(), ToolSettings(prometheus_url=prometheus.url))
    try:
        await request(js, "bad-promql", "prometheus_query", args={"query": "rate(x[5m]"})
        await request(js, "bad-args", "prometheus_query", args={"q": "up"})
        await request(js, "unknown", "kubectl_delete", args={})
        await request(js, "nothing-alike", "similar_incidents", args={})
        await request(js, "no-topology", "service_topology", args={"service": "checkout"})
        bad_promql, bad_args, unknown, nothing_alike, no_topology = await outcomes.of(
            "bad-promql", "bad-args", "unknown", "nothing-alike", "no-topology"
        )
    finally:
        stop.set()
        await task
    assert isinstance(bad_promql, ToolFailed) and "bad_data" in bad_promql.error
    assert isinstance(bad_args, ToolFailed)
    assert bad_args.error.startswith("bad arguments for prometheus_query: query: Field required")
    assert isinstance(unknown, ToolFailed) and "no tool named 'kubectl_delete'" in unknown.error
    assert isinstance(nothing_alike, ToolFailed) and nothing_alike.error == (
        "bad arguments for similar_incidents: args: give service or alert (or both): "
        "what makes an incident similar"
    )
    assert isinstance(no_topology, ToolFailed)
    assert no_topology.error == "TopologyMissing: no topology configured (VIGIL_TOPOLOGY)"


class Nothing(BaseModel):
    pass


async def test_one_turns_calls_run_at_once_and_a_hung_tool_times_out(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes
) -> None:
    running, most = 0, 0

    async def slow(ctx: ToolContext, args: Nothing) -> dict[str, int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(1)  # the tool's work, not synchronisation
        running -= 1
        return {"done": 1}

    async def hangs(ctx: ToolContext, args: Nothing) -> None:
        await asyncio.Event().wait()

    registry = ToolRegistry()
    registry.register(Tool("slow", "takes a second", Nothing, slow))
    registry.register(Tool("hangs", "never answers", Nothing, hangs))
    stop, task = await workers(nc, registry)
    try:
        calls = [f"c{i}" for i in range(8)]
        for call in calls:
            await request(js, call, "slow")
        await request(js, "hung", "hangs", timeout_seconds=0.3)
        done = await outcomes.of(*calls, "hung")
    finally:
        stop.set()
        await task
    assert all(isinstance(d, ToolCompleted) for d in done[:-1])
    assert most == 8  # all eight at the same time
    hung = done[-1]
    assert isinstance(hung, ToolFailed) and hung.timed_out and "0.3s" in hung.error


async def test_recent_changes_are_the_ones_before_now(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes
) -> None:
    now = SPIKE
    changes = [
        ChangeRecorded(service="checkout", kind="deploy", description="v42",
                       changed_at=now - timedelta(minutes=10)),
        ChangeRecorded(service="search", kind="config", changed_at=now - timedelta(hours=1)),
        ChangeRecorded(service="checkout", kind="deploy", description="after now",
                       changed_at=now + timedelta(minutes=1)),
        ChangeRecorded(service="checkout", kind="deploy", description="too old",
                       changed_at=now - timedelta(days=3)),
    ]  # fmt: skip
    await EventPublisher(js).publish_many(
        [new_event(c, incident_id=f"change-{i}", source="test") for i, c in enumerate(changes)]
    )
    stop, task = await workers(nc, default_tools())
    try:
        await request(js, "all", "recent_changes", args={}, now=now)
        await request(js, "mine", "recent_changes", args={"service": "checkout"}, now=now)
        every, mine = await outcomes.of("all", "mine")
    finally:
        stop.set()
        await task
    assert isinstance(every, ToolCompleted) and isinstance(mine, ToolCompleted)
    assert [c["description"] for c in every.result["changes"]] == ["v42", ""]
    assert mine.result == {
        "changes": [{"service": "checkout", "kind": "deploy", "description": "v42",
                     "at": (now - timedelta(minutes=10)).isoformat(),
                     "minutes_before_now": 10.0, "ref": None}],
        "total": 1,
    }  # fmt: skip


async def test_a_request_handled_twice_has_one_outcome(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes
) -> None:
    """A worker killed before its ack: the request is handled again, and its outcome is the
    same event (its id derived from the tool call), which JetStream drops."""
    registry, runs, twice = ToolRegistry(), [], asyncio.Event()

    async def instant(ctx: ToolContext, args: Nothing) -> int:
        runs.append(1)
        if len(runs) == 2:
            twice.set()
        return 1

    registry.register(Tool("instant", "answers at once", Nothing, instant))
    stop, task = await workers(nc, registry)
    try:
        for _ in range(2):  # the same call twice (two messages, as a redelivery would be)
            await request(js, "once", "instant")
        await asyncio.wait_for(twice.wait(), 20)
        await outcomes.of("once")
    finally:
        stop.set()
        await task  # both outcomes published: the consumer returns once its handlers ended
    stored = [e for e in await stream_events(js) if e.type == "ToolCompleted"]
    assert len(runs) == 2 and len(stored) == 1
