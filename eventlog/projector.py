"""The projector: every message of the stream, applied to DuckDB exactly once.

The DuckDB checkpoint, written with each batch, is the truth about how far the file got; the
durable consumer is only a cursor (eventlog/follow.py), recreated to begin right after the
checkpoint at every start (after a crash its unacked messages would otherwise come back only
after ack_wait, out of order). Messages at or below the checkpoint are skipped, and the events
table's unique id absorbs a re-published event.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from eventlog.deadletter import DeadLetter, dead_letter_for
from eventlog.envelope import MalformedEvent, parse_event
from eventlog.follow import Prepare, StreamFollower, Write
from eventlog.store import ProjectionStore, StoredMessage
from eventlog.stream import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, EVENTS_STREAM

log = logging.getLogger(__name__)


class Projector:
    """Follows VIGIL_EVENTS (and the dead letters) into one DuckDB file."""

    def __init__(
        self,
        js: JetStreamContext,
        store: ProjectionStore,
        *,
        batch: int = 2000,
        fetch_timeout: float = 1.0,
        check_every: int = 10,
    ) -> None:
        self.js = js
        self.store = store
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.check_every = check_every  # quiet waits between checks that a consumer still exists
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
        follower = StreamFollower(
            self.js,
            stream=stream,
            durable=durable,
            subject=subject,
            after=self.store.last_seq(stream),
            batch=self.batch,
            wait=self.fetch_timeout,
            prepare=prepare,
            commit=self._commit,
            check_every=self.check_every,
        )
        await follower.start()
        self._subscribed += 1
        if self._subscribed == 2:
            self.following.set()
        await follower.run(stop)

    async def _commit(self, write: Write | None, last: Msg) -> None:
        if write is not None:
            await asyncio.to_thread(write)
        await last.ack()  # AckPolicy.ALL: acks the whole batch
        async with self.applied:
            self.applied.notify_all()

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
