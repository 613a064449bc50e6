"""The raw library's sagas for `bench.saga`: the JetStream operations the orchestrator makes for
one saga of three noop steps, in its order, done with nats-py alone and nothing decided.

A worker fetches the proposal from a durable pull consumer; reads the incident's events and
then the last hour's SagaStarted through throwaway consumers (create, fetch, `orjson.loads`,
delete, as `eventlog.history` does); reads the pause switch from KV before each of the seven
moves (start, three steps, verify, finish, done); publishes the saga's ten events one after
another, each acked before the next (`js.publish`); and acks the proposal. The events are
Vigil's own, serialized before the clock starts, on `raw.<incident>.<type>` in a stream of
their own (`BENCH_RAW`, the events stream's settings), so neither side's reads see the other's
events. Nothing is validated, folded or checked against the catalog or the policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from eventlog.envelope import Event, new_event
from eventlog.payloads import (
    IncidentResolved,
    Payload,
    RemediationProposed,
    SagaCompleted,
    SagaStarted,
    SagaStepStarted,
    SagaStepSucceeded,
    VerificationPassed,
)
from eventlog.publisher import MSG_ID_HEADER
from eventlog.stream import events_stream_config
from responder.saga.executors import idempotency_key
from responder.saga.pause import PAUSE_KEY

RAW_STREAM = "BENCH_RAW"
DURABLE = "raw-saga"
MakeIncident = Callable[[str, int], tuple[Event, Event]]


@dataclasses.dataclass(frozen=True)
class RawSaga:
    incident_id: str
    events: list[Event]  # SagaStarted, each step's two, VerificationPassed, the last two


@dataclasses.dataclass
class Timings:
    """A run of sagas, in seconds of one clock: when the proposals were appended, when each
    saga completed, and per saga the time of its SagaStarted, of each step's SagaStepStarted
    and SagaStepSucceeded, and of its SagaCompleted."""

    started: float
    completed: list[float]
    marks: list[list[float]]


def saga_events(proposal: Event) -> RawSaga:
    """The ten events the orchestrator appends for a plan of noop steps, as it makes them."""
    proposed = proposal.data
    assert isinstance(proposed, RemediationProposed)
    sid = proposed.saga_id
    service = proposed.steps[0].params["service"]
    data: list[Payload] = [SagaStarted(saga_id=sid, steps=proposed.steps, services=[service])]
    for i, step in enumerate(proposed.steps):
        output = {"dry_run": True, "action": step.action, "params": step.params}
        data += [
            SagaStepStarted(saga_id=sid, step=i, action=step.action, params=step.params,
                            idempotency_key=idempotency_key(sid, i, 1)),
            SagaStepSucceeded(saga_id=sid, step=i, action=step.action, output=output),
        ]  # fmt: skip
    data += [
        VerificationPassed(saga_id=sid, check="nothing to verify: no step changed anything"),
        SagaCompleted(saga_id=sid),
        IncidentResolved(how="remediation", by="vigil", summary="note, note, note"),
    ]
    incident_id = proposal.incident_id
    return RawSaga(
        incident_id, [new_event(d, incident_id=incident_id, source="saga") for d in data]
    )


def raw_subject(event: Event) -> str:
    return f"raw.{event.incident_id}.{event.type}"


async def publish(js: JetStreamContext, event: Event, body: bytes | None = None) -> None:
    ack = await js.publish(
        raw_subject(event), body or event.to_json(), headers={MSG_ID_HEADER: str(event.id)}
    )
    assert ack.stream == RAW_STREAM


async def read(js: JetStreamContext, subject: str, since: datetime | None = None) -> list[object]:
    """What `eventlog.history.read_events` does on the wire, each message only decoded."""
    info = await js.add_consumer(
        RAW_STREAM,
        ConsumerConfig(
            filter_subjects=[subject], ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL if since is None else DeliverPolicy.BY_START_TIME,
            opt_start_time=since, inactive_threshold=60.0, mem_storage=True,
        ),
    )  # fmt: skip
    total, out = info.num_pending or 0, []
    try:
        sub = await js.pull_subscribe_bind(info.name, stream=RAW_STREAM)
        while len(out) < total:
            msgs = await sub.fetch(min(500, total - len(out)), timeout=5)
            out += [orjson.loads(m.data) for m in msgs]
        await sub.unsubscribe()
    finally:
        await js.delete_consumer(RAW_STREAM, info.name)
    return out


async def one_saga(
    js: JetStreamContext, kv: KeyValue, saga: RawSaga, bodies: list[bytes]
) -> list[float]:
    """One saga's operations in the orchestrator's order; returns the time before the publish
    of its SagaStarted, each step event and its SagaCompleted (where ours sets `occurred_at`)."""
    started, *rest = zip(saga.events, bodies, strict=True)
    steps, (verified, completed, resolved) = rest[: len(rest) - 3], rest[len(rest) - 3 :]
    await read(js, f"raw.{saga.incident_id}.>")
    await kv.get(PAUSE_KEY)
    await read(js, "raw.*.SagaStarted", since=datetime.now(UTC) - timedelta(hours=1))
    marks = [time.perf_counter()]
    await publish(js, *started)
    for i, event in enumerate(steps):
        if i % 2 == 0:
            await kv.get(PAUSE_KEY)
        marks.append(time.perf_counter())
        await publish(js, *event)
    await kv.get(PAUSE_KEY)
    await publish(js, *verified)
    await kv.get(PAUSE_KEY)
    marks.append(time.perf_counter())
    await publish(js, *completed)
    await publish(js, *resolved)
    await kv.get(PAUSE_KEY)
    return marks


@dataclasses.dataclass
class _Run:
    sagas: dict[str, RawSaga]
    bodies: dict[str, list[bytes]]
    marks: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    done: dict[str, float] = dataclasses.field(default_factory=dict)
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    failed: Exception | None = None

    async def worker(self, js: JetStreamContext, kv: KeyValue) -> None:
        """Takes proposals one at a time from the durable, as many workers as concurrency."""
        try:
            await self._work(js, kv)
        except Exception as exc:  # raised by all_of: a saga left undone would hang the run
            self.failed = exc
            self.changed.set()

    async def _work(self, js: JetStreamContext, kv: KeyValue) -> None:
        sub = await js.pull_subscribe_bind(DURABLE, stream=RAW_STREAM)
        while True:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in msgs:
                incident_id = msg.subject.split(".")[1]
                saga, bodies = self.sagas[incident_id], self.bodies[incident_id]
                self.marks[incident_id] = await one_saga(js, kv, saga, bodies)
                await msg.ack()
                self.done[incident_id] = time.perf_counter()
                self.changed.set()

    async def all_of(self, incidents: list[str], timeout: float = 600) -> None:
        async with asyncio.timeout(timeout):
            while not all(i in self.done for i in incidents):
                if self.failed is not None:
                    raise self.failed
                self.changed.clear()
                await self.changed.wait()


async def raw_sagas(
    js: JetStreamContext,
    kv: KeyValue,
    n: int,
    concurrency: int,
    make_incident: MakeIncident,
    warm_up: int,
) -> Timings:
    """n sagas' proposals appended at once, `concurrency` workers taking them; a saga has
    completed when its proposal is acked."""
    config = dataclasses.replace(events_stream_config(), name=RAW_STREAM, subjects=["raw.>"])
    await js.add_stream(config)
    await js.add_consumer(
        RAW_STREAM,
        ConsumerConfig(
            durable_name=DURABLE, filter_subject="raw.*.RemediationProposed",
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=10.0,
        ),
    )  # fmt: skip
    run = _Run({}, {})
    workers = [asyncio.create_task(run.worker(js, kv)) for _ in range(concurrency)]
    try:
        for prefix, count in (("warm", warm_up), ("inc", n)):
            made = [make_incident(f"{prefix}-{i}", i) for i in range(count)]
            for _, proposal in made:
                saga = run.sagas[proposal.incident_id] = saga_events(proposal)
                run.bodies[proposal.incident_id] = [e.to_json() for e in saga.events]
            await publish_all(js, [anomaly for anomaly, _ in made])
            started = time.perf_counter()
            await publish_all(js, [proposal for _, proposal in made])
            measured = [proposal.incident_id for _, proposal in made]
            await run.all_of(measured)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return Timings(started, [run.done[i] for i in measured], [run.marks[i] for i in measured])


async def publish_all(js: JetStreamContext, events: list[Event]) -> None:
    for event in events:
        await js.publish_async(
            raw_subject(event), event.to_json(), headers={MSG_ID_HEADER: str(event.id)}
        )
    await js.publish_async_completed()
