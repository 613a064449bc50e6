"""Following events as they are appended, from a stream sequence on: for the API's live
streams (SSE) and `vigil tail`.

A follower is nats-py's ordered consumer: an ephemeral push consumer in memory, no acks, that
the client recreates from the last sequence it saw when a delivery goes missing or the
heartbeats stop, so a reader gets every event once and in stream order. Closing it deletes the
consumer at once (the server would only drop it after its inactive threshold), so a client
that goes away leaves nothing behind.

`read_after` is the bounded sibling: a page of the events after a sequence, for timelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from eventlog.envelope import SUBJECT_PREFIX, MalformedEvent, parse_event
from eventlog.history import FETCH_BATCH, StoredEvent, stored_events
from eventlog.stream import EVENTS_STREAM

log = logging.getLogger(__name__)
ALL_EVENTS = f"{SUBJECT_PREFIX}.>"
# Removed by the server this long after its reader vanished without closing (a killed process).
INACTIVE_THRESHOLD = 30.0
# The server's heartbeat to an idle follower; two missed (a server restarted, its consumer
# lost with it) and the client recreates the consumer after the last sequence it saw.
HEARTBEAT = 2.0


def incident_subject(incident_id: str) -> str:
    """The subject filter of one incident's events (`incident_id` must be a valid id)."""
    return f"{SUBJECT_PREFIX}.{incident_id}.>"


async def last_seq(js: JetStreamContext, *, stream: str = EVENTS_STREAM) -> int:
    """The stream's last sequence now (0 when empty): `after` for "new events only"."""
    return (await js.stream_info(stream)).state.last_seq


async def has_events(js: JetStreamContext, subject: str, *, stream: str = EVENTS_STREAM) -> bool:
    """Whether the stream holds any message on `subject` (a filter, wildcards allowed)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    return bool(info.state.subjects)


class EventFollower:
    """The events on `subject` after stream sequence `after`, as they come, until closed.

    Use as `async with EventFollower(js, subject, after=n) as events: async for e in events`.
    Iterating waits for the next event, and ends when `until` is set (a server that stops
    must not wait for its clients to hang up); a message that is not a valid event is
    skipped with a warning (the projector dead-letters it). `after` is the last sequence the
    reader has (0: from the stream's start).
    """

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        *,
        after: int,
        until: asyncio.Event | None = None,
        stream: str = EVENTS_STREAM,
    ) -> None:
        if after < 0:
            raise ValueError(f"after must be a stream sequence >= 0, not {after}")
        self.js, self.subject, self.after, self.stream = js, subject, after, stream
        self.until = until or asyncio.Event()
        self._sub: JetStreamContext.PushSubscription | None = None

    async def __aenter__(self) -> EventFollower:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.after + 1,
            inactive_threshold=INACTIVE_THRESHOLD,
        )
        self._sub = await self.js.subscribe(
            self.subject, stream=self.stream, config=config, ordered_consumer=True,
            idle_heartbeat=HEARTBEAT,
        )  # fmt: skip
        # nats-py restarts an ordered consumer after the last sequence it saw, and with none
        # seen yet from the stream's first: tell it where this one starts.
        jsi = getattr(self._sub._sub, "_jsi", None)
        if jsi is not None and getattr(jsi, "_sseq", None) == 0:
            jsi._sseq = self.after
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def consumer(self) -> str | None:
        """The server's name for the consumer now (it changes when the client recreates it)."""
        return self._sub._consumer if self._sub is not None else None  # nats-py keeps it there

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StoredEvent]:
        assert self._sub is not None, "enter the follower first"
        stopping = asyncio.ensure_future(self.until.wait())
        arriving: asyncio.Future[Msg] | None = None
        try:
            while not self.until.is_set():
                arriving = asyncio.ensure_future(self._sub.next_msg(timeout=None))
                await asyncio.wait({arriving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not arriving.done():
                    return
                stored = self._stored(arriving.result())
                if stored is not None:
                    yield stored
        finally:
            stopping.cancel()
            if arriving is not None:
                arriving.cancel()

    def _stored(self, msg: Msg) -> StoredEvent | None:
        """The event, or None for a malformed one, or one at or before `after`: nats-py
        restarts an ordered consumer that saw nothing yet from the stream's first message."""
        seq = msg.metadata.sequence.stream
        if seq <= self.after:
            return None
        try:
            event = parse_event(msg.data)
        except MalformedEvent as exc:
            log.warning("skipping malformed event at seq %s: %s", seq, exc.reason)
            return None
        self.after = seq
        return StoredEvent(event, seq)

    async def close(self) -> None:
        """Stop the subscription and delete the consumer; a lost connection is not an error
        (the server drops the consumer after INACTIVE_THRESHOLD)."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        consumer = sub._consumer
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
        with contextlib.suppress(NotFoundError, NatsError):
            await self.js.delete_consumer(self.stream, consumer)


async def read_after(
    js: JetStreamContext, subject: str, *, after: int, limit: int, stream: str = EVENTS_STREAM
) -> list[StoredEvent]:
    """Up to `limit` events on `subject` after stream sequence `after`, in stream order, as
    the stream holds them now. Malformed messages are skipped (with a warning) and not
    counted. Raises what nats-py raises when the server does not answer."""
    info = await js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            inactive_threshold=60.0,  # removed by the server if we die while reading
            mem_storage=True,
        ),
    )
    out: list[StoredEvent] = []
    try:
        sub = await js.pull_subscribe_bind(info.name, stream=stream)
        pending = info.num_pending or 0
        while len(out) < limit and pending > 0:
            try:
                msgs = await sub.fetch(min(FETCH_BATCH, pending, limit - len(out)), timeout=5)
            except NatsTimeoutError:
                break
            pending -= len(msgs)
            out += stored_events(msgs)
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, info.name)
    return out
