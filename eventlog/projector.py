"""The projector: every message of the stream, applied to DuckDB exactly once.

The DuckDB checkpoint, written with each batch, is the truth about how far the file got; the
durable consumer is only a cursor. At start the consumer is checked against the checkpoint and
recreated to start right after it when they disagree (after a crash, its unacked messages would
otherwise come back only after ack_wait, out of order). Messages at or below the checkpoint are
skipped, and the events table's unique id absorbs a re-published event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from eventlog.deadletter import DeadLetter, dead_letter_for, record_dead_letter
from eventlog.envelope import MalformedEvent, parse_event
from eventlog.store import ProjectionStore, StoredMessage
from eventlog.stream import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, EVENTS_STREAM

log = logging.getLogger(__name__)

# An abandoned projector consumer (its DuckDB file deleted) is removed by the server.
CONSUMER_INACTIVE_THRESHOLD = 24 * 3600.0


class Projector:
    """Follows VIGIL_EVENTS (and the dead letters) into one DuckDB file."""

    def __init__(
        self,
        js: JetStreamContext,
        store: ProjectionStore,
        *,
        batch: int = 1000,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.js = js
        self.store = store
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.durable = f"projector-{store.db_id[:12]}"
        self.applied = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(
            self._follow(EVENTS_STREAM, self.durable, "vigil.evt.>", self._apply_events, stop),
            self._follow(
                DEAD_LETTER_STREAM,
                f"{self.durable}-dlq",
                f"{DEAD_LETTER_PREFIX}.>",
                self._apply_dead_letters,
                stop,
            ),
        )

    async def wait_for(self, seq: int, stream: str = EVENTS_STREAM) -> None:
        """Return once the file holds everything up to stream sequence `seq`."""
        async with self.applied:
            await self.applied.wait_for(lambda: self.store.last_seq(stream) >= seq)

    async def _follow(
        self,
        stream: str,
        durable: str,
        subject: str,
        apply: Callable[[str, list[Msg]], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:
        last = self.store.last_seq(stream)
        await self._reconcile(stream, durable, subject, last)
        sub = await self.js.pull_subscribe_bind(durable, stream=stream)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout)
                except (TimeoutError, NatsTimeoutError):
                    continue
                await apply(stream, msgs)
                await msgs[-1].ack()  # AckPolicy.ALL: acks the whole batch
                async with self.applied:
                    self.applied.notify_all()
        finally:
            await sub.unsubscribe()

    async def _reconcile(self, stream: str, durable: str, subject: str, last: int) -> None:
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            info = None
        if info is not None and (info.ack_floor.stream_seq != last or info.num_ack_pending):
            log.info("%s: consumer at %d, file at %d: restarting it from the file", durable,
                     info.ack_floor.stream_seq, last)  # fmt: skip
            await self.js.delete_consumer(stream, durable)
            info = None
        if info is None:
            await self.js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=subject,
                    ack_policy=AckPolicy.ALL,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=last + 1,
                    ack_wait=60.0,
                    max_ack_pending=self.batch * 2,
                    inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
                ),
            )

    async def _apply_events(self, stream: str, msgs: list[Msg]) -> None:
        floor = self.store.last_seq(stream)
        batch: list[StoredMessage] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= floor:
                continue  # applied before a crash, delivered again
            try:
                event = parse_event(msg.data)
                if event.subject != msg.subject:
                    raise MalformedEvent(f"subject {msg.subject} does not match {event.subject}")
            except MalformedEvent as exc:
                await record_dead_letter(
                    self.js, dead_letter_for(msg, consumer=self.durable, reason=exc.reason)
                )
                event = None
            batch.append(StoredMessage(seq, msg.data, event))
        if batch:
            await asyncio.to_thread(self.store.apply_events, stream, batch)

    async def _apply_dead_letters(self, stream: str, msgs: list[Msg]) -> None:
        floor = self.store.last_seq(stream)
        letters = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= floor:
                continue
            try:
                letters.append((seq, DeadLetter.model_validate(orjson.loads(msg.data))))
            except (ValueError, orjson.JSONDecodeError) as exc:
                # Not ours (someone published to vigil.dlq.*): there is nowhere further to send it.
                log.error("%s seq %d is not a dead letter, skipped: %s", stream, seq, exc)
        if letters:
            await asyncio.to_thread(self.store.apply_dead_letters, stream, letters)
