"""The consumer helper: at-least-once handling, poison and malformed messages dead-lettered
without blocking the rest, heartbeats for long work, and a work queue across processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from eventlog.consumer import ConsumerSpec, Received, RedeliverLater, consume
from eventlog.deadletter import DeadLetter
from eventlog.publisher import EventPublisher
from eventlog.stream import DEAD_LETTER_STREAM, EVENTS_STREAM, ensure_streams
from tests.eventlog.samples import steps
from vigil.broker import EmbeddedNats

REPO = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def consuming(
    js: JetStreamContext, spec: ConsumerSpec, handler: Callable[[Received], Awaitable[None]]
) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(consume(js, spec, handler, stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 20)  # the durable exists: what comes is for it
        yield
    finally:
        stop.set()
        await task


class Recorder:
    """A handler that keeps the ids it saw and says when `expect` of them have come."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.ids: list[uuid.UUID] = []
        self.all_in = asyncio.Event()

    async def handle(self, received: Received) -> None:
        self.ids.append(received.event.id)
        if len(self.ids) == self.expect:
            self.all_in.set()


async def next_dead_letter(js: JetStreamContext) -> DeadLetter:
    sub = await js.subscribe("vigil.dlq.>", stream=DEAD_LETTER_STREAM, ordered_consumer=True)
    msg = await sub.next_msg(timeout=20)
    await sub.unsubscribe()
    return DeadLetter.model_validate(orjson.loads(msg.data))


async def test_every_event_is_handled_and_acked(js: JetStreamContext) -> None:
    events = steps(100)
    seen = Recorder(expect=len(events))
    spec = ConsumerSpec(durable="t-all", filter_subject="vigil.evt.>")
    async with consuming(js, spec, seen.handle):
        await EventPublisher(js).publish_many(events)
        await asyncio.wait_for(seen.all_in.wait(), 20)
    assert sorted(seen.ids) == sorted(e.id for e in events)
    info = await js.consumer_info(EVENTS_STREAM, "t-all")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_poison_event_is_dead_lettered_and_the_rest_flow(js: JetStreamContext) -> None:
    events = steps(20)
    poison = events[3]
    attempts: list[uuid.UUID] = []
    handled: set[uuid.UUID] = set()
    rest_done = asyncio.Event()

    async def handle(received: Received) -> None:
        event = received.event
        attempts.append(event.id)
        if event.id == poison.id:
            raise RuntimeError("cannot handle this one")
        handled.add(event.id)
        if len(handled) == len(events) - 1:
            rest_done.set()

    spec = ConsumerSpec(
        durable="t-poison", filter_subject="vigil.evt.>", max_deliver=3, retry_backoff=0.05
    )
    async with consuming(js, spec, handle):
        await EventPublisher(js).publish_many(events)
        letter = await next_dead_letter(js)
        await asyncio.wait_for(rest_done.wait(), 20)
    assert attempts.count(poison.id) == 3
    assert letter.consumer == "t-poison"
    assert letter.stream_seq == 4
    assert letter.deliveries == 3
    assert "cannot handle this one" in letter.reason
    assert orjson.loads(letter.payload())["id"] == str(poison.id)


async def test_a_malformed_message_is_dead_lettered_at_once(nc: NATS, js: JetStreamContext) -> None:
    good = steps(5)
    handled = Recorder(expect=len(good))
    spec = ConsumerSpec(durable="t-bad", filter_subject="vigil.evt.>", max_deliver=5)
    async with consuming(js, spec, handled.handle):
        await js.publish("vigil.evt.inc-1.AgentStep", b'{"type": "AgentStep", "oops": 1}')
        await EventPublisher(js).publish_many(good)
        letter = await next_dead_letter(js)
        await asyncio.wait_for(handled.all_in.wait(), 20)
    assert letter.deliveries == 1  # no retries for what can never parse
    assert letter.reason.startswith("malformed event:")
    assert "data: Field required" in letter.reason
    assert handled.ids == [e.id for e in good]


async def test_long_work_keeps_its_message_with_in_progress(js: JetStreamContext) -> None:
    deliveries = 0
    finished = asyncio.Event()

    async def slow(received: Received) -> None:
        nonlocal deliveries
        deliveries += 1
        await asyncio.sleep(3.5)  # the work itself: longer than ack_wait
        finished.set()

    spec = ConsumerSpec(durable="t-slow", filter_subject="vigil.evt.>", ack_wait=1.0)
    async with consuming(js, spec, slow):
        await EventPublisher(js).publish_many(steps(1))
        await asyncio.wait_for(finished.wait(), 20)
    info = await js.consumer_info(EVENTS_STREAM, "t-slow")
    assert deliveries == 1
    assert info.num_redelivered == 0
    assert info.ack_floor.stream_seq == 1


@pytest.mark.timeout(90)
async def test_two_processes_share_one_durable_and_split_the_work(
    nats_server: EmbeddedNats, nc: NATS, js: JetStreamContext
) -> None:
    handled: dict[str, list[str]] = {"w1": [], "w2": []}
    ready: set[str] = set()
    all_ready = asyncio.Event()
    total = 400
    all_handled = asyncio.Event()

    async def on_ready(msg: object) -> None:
        ready.add(msg.subject.rsplit(".", 1)[1])  # type: ignore[attr-defined]
        if len(ready) == 2:
            all_ready.set()

    async def on_handled(msg: object) -> None:
        handled[msg.subject.rsplit(".", 1)[1]].append(msg.data.decode())  # type: ignore[attr-defined]
        if sum(len(v) for v in handled.values()) >= total:
            all_handled.set()

    await nc.subscribe("test.ready.*", cb=on_ready)
    await nc.subscribe("test.handled.*", cb=on_handled)
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.eventlog.workqueue_worker", nats_server.url, name,
            cwd=REPO,
        )
        for name in ("w1", "w2")
    ]  # fmt: skip
    try:
        await asyncio.wait_for(all_ready.wait(), 30)
        events = steps(total)
        await EventPublisher(js).publish_many(events)
        await asyncio.wait_for(all_handled.wait(), 60)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            await w.wait()
    one, two = set(handled["w1"]), set(handled["w2"])
    assert one | two == {str(e.id) for e in events}
    assert not one & two, "a message was handled by both processes"
    assert len(handled["w1"]) + len(handled["w2"]) == total  # and none twice by one
    assert one and two, "both processes took a share of the work"


async def test_a_dead_letter_that_cannot_be_recorded_is_retried_not_dropped(
    js: JetStreamContext,
) -> None:
    """The dead-letter stream is gone when the handler gives up: the message must come back
    (a spare delivery) and be recorded once the stream is there again."""
    failed_to_record = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "could not record the dead letter" in record.getMessage():
                failed_to_record.set()

    watch = Watch()
    logging.getLogger("eventlog.consumer").addHandler(watch)
    await js.delete_stream(DEAD_LETTER_STREAM)
    calls = 0

    async def always_fails(received: Received) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("poison")

    spec = ConsumerSpec(
        durable="t-norecord", filter_subject="vigil.evt.>", max_deliver=2, retry_backoff=0.2
    )
    try:
        async with consuming(js, spec, always_fails):
            await EventPublisher(js).publish_many(steps(1))
            await asyncio.wait_for(failed_to_record.wait(), 20)
            await ensure_streams(js)  # the dead-letter stream is back
            letter = await next_dead_letter(js)
    finally:
        logging.getLogger("eventlog.consumer").removeHandler(watch)
    assert calls == 2  # spare deliveries do not run the handler again
    assert letter.consumer == "t-norecord"
    assert letter.deliveries > 2


async def test_a_long_handler_holds_back_only_its_own_incident(js: JetStreamContext) -> None:
    """A's first event waits (a long investigation turn); every event of B is handled
    meanwhile, and A's second event only after A's first."""
    release = asyncio.Event()
    order: list[str] = []
    b_done = asyncio.Event()
    a_events, b_events = steps(2, "inc-a"), steps(10, "inc-b")

    async def handle(received: Received) -> None:
        event = received.event
        if event.id == a_events[0].id:
            await release.wait()
        order.append(f"{event.incident_id}:{event.id}")
        if sum(o.startswith("inc-b") for o in order) == len(b_events):
            b_done.set()

    spec = ConsumerSpec(durable="t-long", filter_subject="vigil.evt.>", concurrency=2)
    async with consuming(js, spec, handle):
        await EventPublisher(js).publish_many([*a_events, *b_events])
        await asyncio.wait_for(b_done.wait(), 20)  # all of B, while A's first still runs
        assert not any(o.startswith("inc-a") for o in order)
        release.set()
        async with asyncio.timeout(20):
            while len(order) < 12:  # noqa: ASYNC110  (A's two: nothing else to await)
                await asyncio.sleep(0.01)
    assert [o for o in order if o.startswith("inc-a")] == [f"inc-a:{e.id}" for e in a_events]


async def test_one_incidents_events_are_handled_in_stream_order(js: JetStreamContext) -> None:
    """Handlers of varying length, many incidents interleaved: within each, stream order."""
    events = [e for i in range(30) for e in steps(1, f"inc-{i % 3}")]
    seen: dict[str, list[int]] = {}
    done = Recorder(expect=len(events))

    async def handle(received: Received) -> None:
        await asyncio.sleep((received.seq * 7 % 5) / 100)  # uneven work, not synchronisation
        seen.setdefault(received.event.incident_id, []).append(received.seq)
        await done.handle(received)

    spec = ConsumerSpec(durable="t-order", filter_subject="vigil.evt.>", concurrency=8)
    async with consuming(js, spec, handle):
        acks = await EventPublisher(js).publish_many(events)
        await asyncio.wait_for(done.all_in.wait(), 20)
    assert all(seqs == sorted(seqs) for seqs in seen.values())
    assert sorted(s for seqs in seen.values() for s in seqs) == [a.seq for a in acks]


async def test_a_handler_gets_the_sequence_and_can_ask_for_the_message_later(
    js: JetStreamContext,
) -> None:
    """The timer a responder needs: `RedeliverLater` hands the message back to JetStream,
    which delivers it again after the delay (it would after a crash, too)."""
    (event,) = steps(1)
    deliveries: list[tuple[int, int]] = []
    again = asyncio.Event()

    async def handle(received: Received) -> None:
        deliveries.append((received.seq, received.deliveries))
        if received.deliveries == 1:
            raise RedeliverLater(0.3)
        again.set()

    spec = ConsumerSpec(durable="t-later", filter_subject="vigil.evt.>")
    async with consuming(js, spec, handle):
        (ack,) = await EventPublisher(js).publish_many([event])
        await asyncio.wait_for(again.wait(), 20)
    assert deliveries == [(ack.seq, 1), (ack.seq, 2)]


async def test_a_handler_past_its_timeout_fails_and_is_dead_lettered(
    js: JetStreamContext,
) -> None:
    (event,) = steps(1)

    async def never_returns(received: Received) -> None:
        await asyncio.Event().wait()

    spec = ConsumerSpec(durable="t-hangs", filter_subject="vigil.evt.>", max_deliver=2,
                        handler_timeout=0.2, retry_backoff=0.1)  # fmt: skip
    async with consuming(js, spec, never_returns):
        await EventPublisher(js).publish_many([event])
        dead = await next_dead_letter(js)
    assert dead.consumer == "t-hangs" and "TimeoutError" in dead.reason


async def test_a_new_durable_can_start_at_the_next_event(js: JetStreamContext) -> None:
    """A responder added to a Vigil with history investigates what comes, not the past."""
    old, new = steps(5, "old"), steps(3, "new")
    await EventPublisher(js).publish_many(old)
    seen = Recorder(expect=len(new))
    spec = ConsumerSpec(durable="t-new", filter_subject="vigil.evt.>", deliver="new")
    async with consuming(js, spec, seen.handle):
        await EventPublisher(js).publish_many(new)
        await asyncio.wait_for(seen.all_in.wait(), 20)
    assert seen.ids == [e.id for e in new]


async def test_with_no_prefetch_a_replica_holds_only_what_it_runs(js: JetStreamContext) -> None:
    """Two replicas of one slot each: while the first runs a long message, the second takes
    the next, instead of it waiting in the first's fetch (as it would with prefetch)."""
    events = steps(2, "inc-a")
    running: dict[str, asyncio.Event] = {"one": asyncio.Event(), "two": asyncio.Event()}
    release = asyncio.Event()
    taken: list[str] = []

    def handler(name: str) -> Callable[[Received], Awaitable[None]]:
        async def handle(received: Received) -> None:
            taken.append(name)
            running[name].set()
            await release.wait()

        return handle

    spec = ConsumerSpec(durable="t-prefetch", filter_subject="vigil.evt.>", concurrency=1,
                        in_incident_order=False, prefetch=0)  # fmt: skip
    async with consuming(js, spec, handler("one")), consuming(js, spec, handler("two")):
        await EventPublisher(js).publish_many(events)
        async with asyncio.timeout(20):
            await asyncio.gather(running["one"].wait(), running["two"].wait())
        release.set()
    assert sorted(taken) == ["one", "two"]
