"""Reading what the stream holds now: every event on some subjects, in stream order.

For a role that rebuilds state from events (an incident's investigation, a saga, the
detector's open anomalies), not for following the stream: it reads a snapshot, up to the
stream's last message when it starts, through a throwaway consumer that the server removes if
the reader dies. JetStream, not DuckDB, is read: the projector lags behind it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventlog.envelope import SUBJECT_PREFIX, Event, MalformedEvent, parse_event
from eventlog.stream import EVENTS_STREAM

log = logging.getLogger(__name__)
FETCH_BATCH = 500


@dataclass(frozen=True)
class StoredEvent:
    """An event as the stream holds it: `seq` is its stream sequence."""

    event: Event
    seq: int


async def read_events(
    js: JetStreamContext,
    subjects: list[str],
    *,
    stream: str = EVENTS_STREAM,
    since: datetime | None = None,
) -> list[StoredEvent]:
    """Every event on `subjects` (filters, wildcards allowed) in stream order, as of now;
    with `since`, those the stream stored from then on (its own clock, not `occurred_at`).

    A message that is not a valid event is skipped with a warning (the projector dead-letters
    it). Raises what nats-py raises when the server does not answer (its timeouts).
    """
    info = await js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subjects=subjects,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL if since is None else DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            inactive_threshold=60.0,  # removed by the server if we die while reading
            mem_storage=True,
        ),
    )
    total = info.num_pending or 0
    out: list[StoredEvent] = []
    try:
        sub = await js.pull_subscribe_bind(info.name, stream=stream)
        read = 0
        while read < total:
            msgs = await sub.fetch(min(FETCH_BATCH, total - read), timeout=5)
            read += len(msgs)
            out += stored_events(msgs)
        await sub.unsubscribe()
    finally:
        await js.delete_consumer(stream, info.name)
    return out


def stored_events(msgs: list[Msg]) -> list[StoredEvent]:
    """The events of JetStream messages with their stream sequences; a malformed one is
    skipped with a warning (it was refused at the edge, so it came from elsewhere)."""
    out: list[StoredEvent] = []
    for msg in msgs:
        seq = msg.metadata.sequence.stream
        try:
            out.append(StoredEvent(parse_event(msg.data), seq))
        except MalformedEvent as exc:
            log.warning("skipping malformed event at seq %s: %s", seq, exc.reason)
    return out


async def incident_events(
    js: JetStreamContext, incident_id: str, *, stream: str = EVENTS_STREAM
) -> list[StoredEvent]:
    """Every event of one incident, in the order it was appended (its subject filter)."""
    return await read_events(js, [f"{SUBJECT_PREFIX}.{incident_id}.>"], stream=stream)
