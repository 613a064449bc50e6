"""The projector: every message of the stream, applied to DuckDB exactly once.

The DuckDB checkpoint, written with each batch, is the truth about how far the file got; the
durable consumer is only a cursor. At every start it is recreated to begin right after the
checkpoint (after a crash its unacked messages would otherwise come back only after ack_wait,
out of order). Messages at or below the checkpoint are skipped, and the events table's unique
id absorbs a re-published event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from nats.nuid import NUID

from eventlog.deadletter import DeadLetter, dead_letter_for
from eventlog.envelope import MalformedEvent, parse_event
from eventlog.store import ProjectionStore, StoredMessage
from eventlog.stream import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, EVENTS_STREAM

log = logging.getLogger(__name__)

# An abandoned projector consumer (its DuckDB file deleted) is removed by the server.
CONSUMER_INACTIVE_THRESHOLD = 24 * 3600.0
RESTART_PAUSE = 0.25  # seconds between tries to restart a consumer during a leader election

Write = Callable[[], object]
Prepare = Callable[[str, list[Msg]], Awaitable[Write | None]]


class Projector:
    """Follows VIGIL_EVENTS (and the dead letters) into one DuckDB file."""

    def __init__(
        self,
        js: JetStreamContext,
        store: ProjectionStore,
        *,
        batch: int = 2000,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.js = js
        self.store = store
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.durable = f"projector-{store.db_id[:12]}"
        self.applied = asyncio.Condition()
        self.following = asyncio.Event()  # set once both consumers are subscribed
        self._subscribed = 0

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(
            self._follow(EVENTS_STREAM, self.durable, "vigil.evt.>", self._prepare_events, stop),
            self._follow(
                DEAD_LETTER_STREAM,
                f"{self.durable}-dlq",
                f"{DEAD_LETTER_PREFIX}.>",
                self._prepare_dead_letters,
                stop,
            ),
        )

    async def catch_up(self, targets: dict[str, int]) -> None:
        """Run until each stream is applied up to its target sequence, then stop."""

        async def reached() -> None:
            for stream, seq in targets.items():
                await self.wait_for(seq, stream)

        stop = asyncio.Event()
        runner = asyncio.create_task(self.run(stop))
        waiter = asyncio.create_task(reached())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        waiter.cancel()
        await runner  # raises what stopped the projector early, if anything did

    async def wait_for(self, seq: int, stream: str = EVENTS_STREAM) -> None:
        """Return once the file holds everything up to stream sequence `seq`."""
        async with self.applied:
            await self.applied.wait_for(lambda: self.store.last_seq(stream) >= seq)

    async def _follow(
        self, stream: str, durable: str, subject: str, prepare: Prepare, stop: asyncio.Event
    ) -> None:
        follow = _Follow(self, stream, durable, subject, prepare)
        await follow.start()
        self._subscribed += 1
        if self._subscribed == 2:
            self.following.set()
        await follow.run(stop)

    async def _commit(self, write: Write | None, last: Msg) -> None:
        if write is not None:
            await asyncio.to_thread(write)
        await last.ack()  # AckPolicy.ALL: acks the whole batch
        async with self.applied:
            self.applied.notify_all()

    async def _restart_when_possible(
        self, stream: str, durable: str, subject: str, last: int, stop: asyncio.Event
    ) -> ConsumerConfig | None:
        """_restart_consumer, retried while JetStream elects a leader; None if told to stop."""
        while not stop.is_set():
            try:
                return await self._restart_consumer(stream, durable, subject, last)
            except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
                log.info("%s: cannot restart the consumer yet (%r)", durable, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_PAUSE)
        return None

    async def _restart_consumer(
        self, stream: str, durable: str, subject: str, last: int
    ) -> ConsumerConfig:
        """(Re)create the durable push consumer to start right after the file's checkpoint.

        The checkpoint is the truth; whatever the consumer remembered from before this start
        (unacked messages of a crashed run, another deliver subject) is discarded. Its push
        delivery runs at ~3x the rate of nats-py's pull fetch (no task per message), with
        flow control and an ack window (`max_ack_pending`) as back-pressure.
        """
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(stream, durable)
        config = ConsumerConfig(
            durable_name=durable,
            deliver_subject=f"_INBOX.vigil.{NUID().next().decode()}",
            filter_subject=subject,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=last + 1,
            ack_wait=60.0,
            max_ack_pending=self.batch * 3,
            flow_control=True,
            idle_heartbeat=5.0,
            inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
        )
        await self.js.add_consumer(stream, config)
        return config

    async def _prepare_events(self, stream: str, msgs: list[Msg]) -> Write:
        batch: list[StoredMessage] = []
        for msg in msgs:
            meta = msg.metadata
            try:
                event = parse_event(msg.data)
                if event.subject != msg.subject:
                    raise MalformedEvent(f"subject {msg.subject} does not match {event.subject}")
            except MalformedEvent as exc:
                # Kept in dead_letters in the batch's transaction, stamped with the message's
                # own time, so a replay finds and records exactly the same.
                dead = dead_letter_for(
                    msg, consumer="projector", reason=exc.reason, at=meta.timestamp
                )
                log.error("unreadable event at %s seq %d: %s", stream, meta.sequence.stream, exc)
                batch.append(StoredMessage(meta.sequence.stream, msg.data, None, dead))
                continue
            batch.append(StoredMessage(meta.sequence.stream, msg.data, event))
        return functools.partial(self.store.apply_events, stream, batch)

    async def _prepare_dead_letters(self, stream: str, msgs: list[Msg]) -> Write:
        letters = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                letters.append(DeadLetter.model_validate(orjson.loads(msg.data)))
            except (ValueError, orjson.JSONDecodeError) as exc:
                # Not ours (someone published to vigil.dlq.*): there is nowhere further to send it.
                log.error("%s seq %d is not a dead letter, skipped: %s", stream, seq, exc)
        # The checkpoint moves past what was skipped too, or a replay would wait for it forever.
        last = msgs[-1].metadata.sequence.stream
        return functools.partial(self.store.apply_dead_letters, stream, letters, last)


def _consecutive(msgs: list[Msg], after: int) -> bool:
    """Whether these are the deliveries numbered after+1, after+2, ...: none went missing."""
    return all(m.metadata.sequence.consumer == after + i for i, m in enumerate(msgs, 1))


class _Follow:
    """One stream followed into the file: its consumer, what has arrived, the write in flight.

    Batch N+1 is taken and prepared while batch N is written, so reading and writing overlap
    instead of adding up. Writes run one at a time, in order, so acks stay in order.
    """

    def __init__(
        self, projector: Projector, stream: str, durable: str, subject: str, prepare: Prepare
    ) -> None:
        self.p, self.stream, self.durable, self.subject = projector, stream, durable, subject
        self.prepare = prepare
        self.handed = projector.store.last_seq(stream)  # highest sequence given to a write
        self.delivered = 0  # the consumer's number for the last message taken
        self.arrived = _Arrivals(projector.batch)
        self.writing: asyncio.Task[None] | None = None
        self.sub: Any = None

    async def start(self) -> None:
        config = await self.p._restart_consumer(
            self.stream, self.durable, self.subject, self.handed
        )
        await self._subscribe(config)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if self.writing is not None and self.writing.done():
                    # Raises if the write failed: the projector stops at once, with the cause,
                    # rather than waiting on a consumer whose ack window has filled up.
                    await self._finish_write()
                msgs = await self.arrived.take(self.p.fetch_timeout)
                if not msgs:
                    continue
                if _consecutive(msgs, self.delivered):
                    await self._hand_over(msgs)
                elif not await self._start_over(msgs, stop):
                    break
            await self._finish_write()
        finally:
            if self.writing is not None and not self.writing.done():
                self.writing.cancel()
            await self.sub.unsubscribe()

    async def _hand_over(self, msgs: list[Msg]) -> None:
        self.delivered = msgs[-1].metadata.sequence.consumer
        # At or below `handed`: applied already (or being applied), delivered again.
        fresh = [m for m in msgs if m.metadata.sequence.stream > self.handed]
        write = await self.prepare(self.stream, fresh) if fresh else None
        if fresh:
            self.handed = fresh[-1].metadata.sequence.stream
        await self._finish_write()  # a failed write ends the loop: nothing after it is applied
        self.writing = asyncio.create_task(self.p._commit(write, msgs[-1]))

    async def _start_over(self, msgs: list[Msg], stop: asyncio.Event) -> bool:
        """Deliveries went missing (lost with a server that was killed, say): acking past them
        (AckPolicy.ALL) would skip them for good. Start the consumer again right after the
        last message handed to a write. False if told to stop meanwhile."""
        gap = msgs[0].metadata.sequence.consumer
        log.warning("%s: delivery %d follows %d: restarting at %d",
                    self.durable, gap, self.delivered, self.handed + 1)  # fmt: skip
        await self._finish_write()
        config = await self.p._restart_when_possible(
            self.stream, self.durable, self.subject, self.handed, stop
        )
        if config is None:
            return False
        await self.sub.unsubscribe()
        self.arrived.clear()  # what came before the restart is dropped
        await self._subscribe(config)
        return True

    async def _subscribe(self, config: ConsumerConfig) -> None:
        self.delivered = 0
        self.sub = await self.p.js.subscribe_bind(
            self.stream, config, self.durable, cb=self.arrived.put, manual_ack=True
        )

    async def _finish_write(self) -> None:
        if self.writing is not None:
            writing, self.writing = self.writing, None
            await writing


class _Arrivals:
    """Messages as the subscription hands them over, taken a batch at a time (a list and an
    event: a queue would cost two coroutine hops per message)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.msgs: list[Msg] = []
        self.some = asyncio.Event()

    async def put(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self.some.set()

    async def take(self, timeout: float) -> list[Msg]:
        """Up to one batch of what has come; waits up to `timeout` when nothing has."""
        if not self.msgs:
            try:
                await asyncio.wait_for(self.some.wait(), timeout)
            except TimeoutError:
                return []
        taken, self.msgs = self.msgs[: self.batch], self.msgs[self.batch :]
        if not self.msgs:
            self.some.clear()
        return taken

    def clear(self) -> None:
        self.msgs = []
        self.some.clear()
