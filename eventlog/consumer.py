"""The consumer every role uses: a durable pull consumer, handled at least once.

A durable name shared by several processes is a work queue: JetStream gives each message to one
of them. A message is acked only after its handler returned (its effect is durable); while it
waits or its handler runs, `in_progress` keeps the message ours instead of a long ack_wait. A
failing handler (or one past `handler_timeout`) is retried up to `max_deliver` times with a
back-off, then dead-lettered; a message that is not a valid event is dead-lettered at once.
Either way the messages behind it flow on.

Each message is handled as soon as a slot is free (`concurrency`), not in fetched batches, so a
long handler holds back no one but the events of its own incident: those are handled one after
another, in stream order (unless `in_incident_order` is off: tool calls run side by side).
The handler gets the stream sequence and the delivery count with the event, and may ask for
the message again later (`RedeliverLater`: a timer that survives a crash, since JetStream
keeps it), or give it up at once (`GiveUp`: dead-lettered, not retried). A new durable
starts at the first event (`deliver="all"`) or at the next one appended (`"new"`: a new
role does not redo history).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field

from eventlog.deadletter import dead_letter_for, record_dead_letter
from eventlog.envelope import Event, MalformedEvent, parse_event
from eventlog.stream import EVENTS_STREAM

log = logging.getLogger(__name__)

DEAD_LETTER_RETRIES = 3


@dataclass(frozen=True)
class Received:
    """One delivery: the event, its stream sequence, and how many times it was delivered (1
    the first time)."""

    event: Event
    seq: int
    deliveries: int


Handler = Callable[[Received], Awaitable[None]]


class RedeliverLater(Exception):
    """Raised by a handler: not done, deliver this message again in `delay` seconds (counts
    as a delivery towards `max_deliver`)."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"redeliver in {delay:g}s")
        self.delay = delay


class GiveUp(Exception):
    """Raised by a handler: this message can never be handled (a permanent refusal): it is
    dead-lettered at once with `reason`, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConsumerSpec(BaseModel):
    """How a role consumes: which events, under which durable name, how patiently."""

    model_config = ConfigDict(frozen=True)

    durable: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    filter_subject: str | tuple[str, ...]  # several: any of them (NATS 2.10 filter_subjects)
    max_deliver: int = Field(default=5, ge=1)
    ack_wait: float = Field(default=30.0, gt=0)
    concurrency: int = Field(default=8, ge=1)
    fetch_timeout: float = Field(default=1.0, gt=0)
    retry_backoff: float = Field(default=1.0, ge=0)
    handler_timeout: float | None = Field(default=None, gt=0, description="seconds; a failure")
    deliver: Literal["all", "new"] = "all"  # where a new durable starts; an old one goes on
    # One incident's events one after another, in stream order (an investigation, a saga);
    # off for independent work such as tool calls, which are to run at the same time.
    in_incident_order: bool = True
    # Messages held beyond the free slots, per slot: short handlers gain from a fetch ahead;
    # long independent ones (tool calls) would wait here while another replica sits idle.
    prefetch: int = Field(default=3, ge=0)

    @property
    def window(self) -> int:
        """Messages held at once (waiting for their incident's turn, or handled)."""
        return self.concurrency * (1 + self.prefetch)

    def consumer_config(self) -> ConsumerConfig:
        several = isinstance(self.filter_subject, tuple)
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=None if several else self.filter_subject,
            filter_subjects=list(self.filter_subject) if several else None,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if self.deliver == "all" else DeliverPolicy.NEW,
            ack_wait=self.ack_wait,
            # Spare deliveries beyond the handler's tries: they retry recording the dead letter
            # if that failed, so a poison message is never dropped unrecorded.
            max_deliver=self.max_deliver + DEAD_LETTER_RETRIES,
            max_ack_pending=max(1000, self.window),
        )


async def consume(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Handle events until `stop` is set; returns once the handlers running have ended (the
    messages not begun are handed back to JetStream at once, for another replica). `ready`
    is set once the durable exists: from then on, what is appended is for it."""
    await js.add_consumer(EVENTS_STREAM, spec.consumer_config())
    sub = await js.pull_subscribe_bind(spec.durable, stream=EVENTS_STREAM)
    if ready is not None:
        ready.set()
    runner = _Runner(js, spec, handler, stop)
    try:
        while not stop.is_set():
            room = await runner.room()
            if room == 0:
                continue
            try:
                msgs = await sub.fetch(room, timeout=spec.fetch_timeout)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in msgs:
                runner.take(msg)
        await runner.settled()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class _Runner:
    """The messages held: each a task that waits for its incident's previous one, then for a
    free slot, then settles; heartbeats keep them ours meanwhile."""

    def __init__(
        self, js: JetStreamContext, spec: ConsumerSpec, handler: Handler, stop: asyncio.Event
    ) -> None:
        self.js, self.spec, self.handler, self.stop = js, spec, handler, stop
        self.slots = asyncio.Semaphore(spec.concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_of: dict[str, asyncio.Task[None]] = {}  # incident -> its latest message

    async def room(self) -> int:
        """How many more messages may be held; waits (or until stop) while none may."""
        while len(self.tasks) >= self.spec.window and not self.stop.is_set():
            stopping = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({*self.tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        return 0 if self.stop.is_set() else self.spec.window - len(self.tasks)

    def take(self, msg: Msg) -> None:
        if not self.spec.in_incident_order:
            incident = str(msg.metadata.sequence.stream)  # each message on its own
        else:
            incident = msg.subject.split(".")[2] if msg.subject.count(".") >= 3 else msg.subject
        task = asyncio.create_task(self._run(msg, self.last_of.get(incident)))
        self.last_of[incident] = task
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._done(incident, t))

    def _done(self, incident: str, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.last_of.get(incident) is task:
            del self.last_of[incident]

    async def _run(self, msg: Msg, previous: asyncio.Task[None] | None) -> None:
        heartbeat = asyncio.create_task(_keep_alive(msg, self.spec.ack_wait / 3))
        try:
            if previous is not None:
                await asyncio.wait({previous})  # its own outcome is its own business
            async with self.slots:
                if self.stop.is_set():
                    await msg.nak()  # not begun: another replica may take it now
                    return
                await _settle(self.js, self.spec, self.handler, msg)
        except Exception as exc:
            # Not acked, so JetStream redelivers it after ack_wait: nothing is lost.
            log.error("%s: could not settle %s: %r", self.spec.durable, msg.subject, exc)
        finally:
            heartbeat.cancel()

    async def settled(self) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks)


async def _settle(js: JetStreamContext, spec: ConsumerSpec, handler: Handler, msg: Msg) -> None:
    try:
        event = parse_event(msg.data)
    except MalformedEvent as exc:
        await _give_up(js, spec, msg, f"malformed event: {exc.reason}")
        return
    deliveries = msg.metadata.num_delivered
    if deliveries > spec.max_deliver:  # a spare delivery: only record it
        await _give_up(js, spec, msg, f"handler failed {spec.max_deliver} times (see the log)")
        return
    try:
        async with asyncio.timeout(spec.handler_timeout):
            await handler(Received(event, msg.metadata.sequence.stream, deliveries))
    except RedeliverLater as later:
        await msg.nak(delay=later.delay)
        return
    except GiveUp as given_up:
        await _give_up(js, spec, msg, given_up.reason)
        return
    except Exception as exc:
        log.exception(
            "incident %s: %s failed on %s (delivery %d/%d)",
            event.incident_id, spec.durable, event.type, deliveries, spec.max_deliver,
        )  # fmt: skip
        if deliveries >= spec.max_deliver:
            await _give_up(js, spec, msg, f"handler failed {deliveries} times: {exc!r}")
        else:
            await msg.nak(delay=spec.retry_backoff * deliveries)
        return
    await msg.ack()


async def _give_up(js: JetStreamContext, spec: ConsumerSpec, msg: Msg, reason: str) -> None:
    """Record, then terminate; if the record fails, a spare delivery brings the message back."""
    try:
        await record_dead_letter(js, dead_letter_for(msg, consumer=spec.durable, reason=reason))
    except Exception:
        log.exception("%s: could not record the dead letter for %s seq %d; retrying",
                      spec.durable, msg.subject, msg.metadata.sequence.stream)  # fmt: skip
        await msg.nak(delay=spec.retry_backoff)
        return
    await msg.term()


async def _keep_alive(msg: Msg, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await msg.in_progress()
