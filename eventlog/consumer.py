"""The consumer every role uses: a durable pull consumer, handled at least once.

A durable name shared by several processes is a work queue: JetStream gives each message to one
of them. A message is acked only after its handler returned (its effect is durable); while a long
handler runs, `in_progress` keeps the message ours instead of a long ack_wait. A failing handler
is retried up to `max_deliver` times with a back-off, then dead-lettered; a message that is not a
valid event is dead-lettered at once. Either way the messages behind it flow on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field

from eventlog.deadletter import dead_letter_for, record_dead_letter
from eventlog.envelope import Event, MalformedEvent, parse_event
from eventlog.stream import EVENTS_STREAM

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]
DEAD_LETTER_RETRIES = 3


class ConsumerSpec(BaseModel):
    """How a role consumes: which events, under which durable name, how patiently."""

    model_config = ConfigDict(frozen=True)

    durable: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    filter_subject: str
    max_deliver: int = Field(default=5, ge=1)
    ack_wait: float = Field(default=30.0, gt=0)
    concurrency: int = Field(default=8, ge=1)
    fetch_timeout: float = Field(default=1.0, gt=0)
    retry_backoff: float = Field(default=1.0, ge=0)

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            # Spare deliveries beyond the handler's tries: they retry recording the dead letter
            # if that failed, so a poison message is never dropped unrecorded.
            max_deliver=self.max_deliver + DEAD_LETTER_RETRIES,
            max_ack_pending=max(1000, self.concurrency * 4),
        )


async def consume(
    js: JetStreamContext, spec: ConsumerSpec, handler: Handler, *, stop: asyncio.Event
) -> None:
    """Handle events until `stop` is set; returns after in-flight messages are settled."""
    await js.add_consumer(EVENTS_STREAM, spec.consumer_config())
    sub = await js.pull_subscribe_bind(spec.durable, stream=EVENTS_STREAM)
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(spec.concurrency, timeout=spec.fetch_timeout)
            except (TimeoutError, NatsTimeoutError):
                continue
            outcomes = await asyncio.gather(
                *(_settle(js, spec, handler, m) for m in msgs), return_exceptions=True
            )
            for msg, outcome in zip(msgs, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    # Not acked, so JetStream redelivers it after ack_wait: nothing is lost.
                    log.error("%s: could not settle %s: %r", spec.durable, msg.subject, outcome)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _settle(js: JetStreamContext, spec: ConsumerSpec, handler: Handler, msg: Msg) -> None:
    try:
        event = parse_event(msg.data)
    except MalformedEvent as exc:
        await _give_up(js, spec, msg, f"malformed event: {exc.reason}")
        return
    if msg.metadata.num_delivered > spec.max_deliver:  # a spare delivery: only record it
        await _give_up(js, spec, msg, f"handler failed {spec.max_deliver} times (see the log)")
        return
    heartbeat = asyncio.create_task(_keep_alive(msg, spec.ack_wait / 3))
    try:
        await handler(event)
    except Exception as exc:
        deliveries = msg.metadata.num_delivered
        log.exception(
            "incident %s: %s failed on %s (delivery %d/%d)",
            event.incident_id,
            spec.durable,
            event.type,
            deliveries,
            spec.max_deliver,
        )
        if deliveries >= spec.max_deliver:
            await _give_up(js, spec, msg, f"handler failed {deliveries} times: {exc!r}")
        else:
            await msg.nak(delay=spec.retry_backoff * deliveries)
        return
    finally:
        heartbeat.cancel()
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
