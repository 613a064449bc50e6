"""Which anomalies are open, folded from the detector's own events in VIGIL_EVENTS.

The event log is the only record: an event that JetStream acknowledged is state persisted,
one that it did not is state not changed (the next poll emits it again, with the same id).
A restart reads back only the open episodes; the run counters start again from zero, which
can delay a resolve by up to `resolve_polls` but never fires an open anomaly twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from detector.events import SOURCE, SeriesKey
from detector.hysteresis import SeriesState, reopened
from eventlog.envelope import Event, MalformedEvent, parse_event, subject_for
from eventlog.payloads import AnomalyDetected, AnomalyPredicted, AnomalyResolved
from eventlog.stream import EVENTS_STREAM

log = logging.getLogger(__name__)

ANOMALY_TYPES = ("AnomalyDetected", "AnomalyPredicted", "AnomalyResolved")
FETCH_BATCH = 500


def fold_open_episodes(events: Iterable[Event]) -> dict[SeriesKey, SeriesState]:
    """Open episodes per series, from the detector's events in stream order."""
    open_: dict[SeriesKey, SeriesState] = {}
    for event in events:
        if event.source != SOURCE:
            continue  # Alertmanager's anomalies are not ours to resolve
        data = event.data
        if isinstance(data, AnomalyResolved):
            key = SeriesKey(data.name, data.fingerprint)
            current = open_.get(key)
            if current is not None and current.starts_at == data.starts_at:
                del open_[key]
        elif isinstance(data, AnomalyDetected):
            key = SeriesKey(data.name, data.fingerprint)
            current = open_.get(key)
            predicted = current is not None and current.predicted
            open_[key] = reopened(data.starts_at, predicted=predicted, detected=True)
        elif isinstance(data, AnomalyPredicted):
            key = SeriesKey(data.name, data.fingerprint)
            if key not in open_:
                # A prediction is dated at its episode's start (see detector.events).
                open_[key] = reopened(event.occurred_at, predicted=True, detected=False)
    return open_


async def load_open_episodes(
    js: JetStreamContext, *, stream: str = EVENTS_STREAM
) -> dict[SeriesKey, SeriesState]:
    """Read every anomaly event once, through a throwaway consumer, and fold it."""
    config = ConsumerConfig(
        filter_subjects=[subject_for("*", t) for t in ANOMALY_TYPES],
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=60.0,  # removed by the server if we die while reading
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config)
    name = info.name
    total = info.num_pending or 0
    events: list[Event] = []
    try:
        sub = await js.pull_subscribe_bind(name, stream=stream)
        read = 0
        while read < total:
            msgs = await sub.fetch(min(FETCH_BATCH, total - read), timeout=5)
            read += len(msgs)
            for msg in msgs:
                try:
                    events.append(parse_event(msg.data))
                except MalformedEvent as exc:  # the projector dead-letters these; we skip them
                    log.warning("skipping malformed event at seq %s: %s",
                                msg.metadata.sequence.stream, exc.reason)  # fmt: skip
        await sub.unsubscribe()
    finally:
        await js.delete_consumer(stream, name)
    return fold_open_episodes(events)
