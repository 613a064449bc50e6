"""Which anomalies are open, folded from the detector's own events in VIGIL_EVENTS.

The event log is the only record: an event that JetStream acknowledged is state persisted,
one that it did not is state not changed (the next poll emits it again, with the same id).
A restart reads back only the open episodes; the run counters start again from zero, which
can delay a resolve by up to `resolve_polls` but never fires an open anomaly twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext

from detector.events import SOURCE, SeriesKey
from detector.hysteresis import SeriesState, reopened
from eventlog.envelope import Event, subject_for
from eventlog.history import read_events
from eventlog.payloads import AnomalyDetected, AnomalyPredicted, AnomalyResolved
from eventlog.stream import EVENTS_STREAM

ANOMALY_TYPES = ("AnomalyDetected", "AnomalyPredicted", "AnomalyResolved")


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
    """Read every anomaly event once and fold it."""
    subjects = [subject_for("*", t) for t in ANOMALY_TYPES]
    return fold_open_episodes(s.event for s in await read_events(js, subjects, stream=stream))
