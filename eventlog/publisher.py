"""Appending events: concurrent, acknowledged, and honest about what was not stored.

Each event is published with `Nats-Msg-Id` = event id, so a retry of the same event within the
stream's duplicate window is dropped by JetStream. Every publish is in flight at once
(`publish_async`); each ack is awaited with a bound, because nats-py never fails an ack whose
reply was lost in a broker restart. An event with no ack is reported, never assumed stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import BadRequestError, TooManyStalledMsgsError

from eventlog.envelope import Event
from eventlog.stream import EVENTS_STREAM

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# The subjects (wildcards allowed) that expectation is about, when not the event's own one.
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when that expectation fails
NATS_PY_MAX_PENDING = 4000  # JetStreamContext's default publish_async_max_pending


class PublishError(Exception):
    """Some events were not acknowledged by JetStream; retrying them with the same ids is safe."""

    def __init__(self, failed: dict[uuid.UUID, str], acked: dict[uuid.UUID, PubAck]) -> None:
        self.failed = failed
        self.acked = acked
        first = next(iter(failed.values()))
        super().__init__(f"{len(failed)} of {len(failed) + len(acked)} events not stored: {first}")


class WrongLastSequence(Exception):
    """Another event was appended on the subject since the one the writer had seen."""


class EventPublisher:
    """Publishes events to VIGIL_EVENTS and returns only when each one is acked or reported."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        ack_timeout: float = 5.0,
        stream: str = EVENTS_STREAM,
        max_pending: int = NATS_PY_MAX_PENDING,
    ) -> None:
        self._js = js
        self._ack_timeout = ack_timeout
        self._stream = stream
        self._max_pending = max_pending

    async def publish(self, event: Event) -> PubAck:
        return (await self.publish_many([event]))[0]

    async def publish_after(
        self, event: Event, last_subject_seq: int, *, on: str | None = None
    ) -> PubAck:
        """Append `event` only if the last event on its subject (or on the subjects `on`
        matches, e.g. `vigil.evt.<incident>.>`) is still `last_subject_seq` (0: none):
        optimistic concurrency, for a chain of events one writer at a time extends.
        Raises WrongLastSequence otherwise (also when a retry finds its own first try
        stored, as the check comes before de-duplication: read back, then decide)."""
        headers = {MSG_ID_HEADER: str(event.id), EXPECTED_LAST_SUBJECT_SEQ: str(last_subject_seq)}
        if on is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = on
        try:
            ack = await self._js.publish(
                event.subject, event.to_json(), timeout=self._ack_timeout, headers=headers
            )
        except BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(exc.description or "wrong last sequence") from None
            raise
        if ack.stream != self._stream:
            raise PublishError({event.id: f"stored in stream {ack.stream}"}, {})
        return ack

    async def publish_many(self, events: Sequence[Event]) -> list[PubAck]:
        """Publish all at once; raise PublishError naming every event that was not stored."""
        failed: dict[uuid.UUID, str] = {}
        pending: dict[asyncio.Future[PubAck], uuid.UUID] = {}
        for i, event in enumerate(events):
            # A bound on the wait for a free slot costs a task per call in nats-py, so it is
            # given only when the window of unacked publishes is full and the call could stall.
            full = self._js.publish_async_pending() >= self._max_pending
            try:
                future = await self._js.publish_async(
                    event.subject,
                    event.to_json(),
                    wait_stall=self._ack_timeout if full else None,
                    headers={MSG_ID_HEADER: str(event.id)},
                )
            except TooManyStalledMsgsError:
                _honour_cancellation(pending)  # nats-py turns our cancellation into this
                # No ack freed a slot for ack_timeout: the rest would wait just as long each.
                reason = f"{self._max_pending} publishes unacknowledged for {self._ack_timeout:g}s"
                failed.update(dict.fromkeys((e.id for e in events[i:]), reason))
                break
            except Exception as exc:  # the client refused it: closed, buffer full
                failed[event.id] = _reason(exc)
            else:
                pending[future] = event.id
        acked = await self._await_acks(pending, failed)
        if failed:
            raise PublishError(failed, acked)
        return [acked[e.id] for e in events]

    async def _await_acks(
        self, pending: dict[asyncio.Future[PubAck], uuid.UUID], failed: dict[uuid.UUID, str]
    ) -> dict[uuid.UUID, PubAck]:
        # Acks arrive about in order, so awaiting each in turn under one deadline mostly finds
        # it done already; asyncio.wait would hang a callback on every future.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._ack_timeout):
                for future in pending:
                    with contextlib.suppress(Exception):  # its error is read just below
                        await future
        acked: dict[uuid.UUID, PubAck] = {}
        for future, event_id in pending.items():
            if not future.done() or future.cancelled():
                future.cancel()
                failed[event_id] = f"no acknowledgement within {self._ack_timeout:g}s"
            elif (exc := future.exception()) is not None:
                failed[event_id] = _reason(exc)
            elif (ack := future.result()).stream != self._stream:
                failed[event_id] = f"stored in stream {ack.stream}, not {self._stream}"
            else:
                acked[event_id] = ack
        return acked


def _honour_cancellation(pending: dict[asyncio.Future[PubAck], uuid.UUID]) -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        for future in pending:
            future.cancel()
        raise asyncio.CancelledError


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
