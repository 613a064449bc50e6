"""The anomalies Vigil holds firing at a moment, rebuilt from the stream: what
`service_topology` and `related_alerts` call "alerting".

A firing is an `AnomalyDetected` (one per fingerprint and start); it is firing at `now` if it
started at or before `now` and has not ended before it: no `AnomalyResolved` whose `ends_at`
is before `now`, and not withdrawn (`AnomalyWithdrawn`, recorded by `now`) unless listed
again after (`AnomalyDetected` with `returned`). JetStream is read, not DuckDB: the projector
lags behind the stream, and a worker has no DuckDB of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext

from eventlog.envelope import Event, subject_for
from eventlog.history import read_events
from eventlog.payloads import AnomalyDetected, AnomalyResolved, AnomalyWithdrawn

ANOMALY_EVENTS = ("AnomalyDetected", "AnomalyResolved", "AnomalyWithdrawn")


@dataclass(frozen=True)
class FiringAnomaly:
    name: str
    service: str | None
    severity: str | None
    starts_at: datetime
    incident_id: str
    fingerprint: str
    origin: str


@dataclass
class _Firing:
    detected: AnomalyDetected
    incident_id: str
    ended_at: datetime | None = None
    withdrawn: bool = False


async def firing_anomalies(js: JetStreamContext, now: datetime) -> list[FiringAnomaly]:
    """Every anomaly firing at `now`, the latest to start first."""
    events = await read_events(js, [subject_for("*", kind) for kind in ANOMALY_EVENTS])
    return firing_at([stored.event for stored in events], now)


def firing_at(events: list[Event], now: datetime) -> list[FiringAnomaly]:
    """The fold of `firing_anomalies`, over anomaly events in stream order."""
    firings: dict[tuple[str, datetime], _Firing] = {}
    for event in events:
        data = event.data
        key = (getattr(data, "fingerprint", ""), getattr(data, "starts_at", now))
        known = firings.get(key)
        if isinstance(data, AnomalyDetected):
            if known is None:
                firings[key] = _Firing(data, event.incident_id)
            elif data.returned and event.occurred_at <= now:
                known.withdrawn = False
        elif known is None:
            continue  # the end of a firing never seen starting
        elif isinstance(data, AnomalyResolved):
            known.ended_at = min(known.ended_at or data.ends_at, data.ends_at)
        elif isinstance(data, AnomalyWithdrawn) and event.occurred_at <= now:
            known.withdrawn = True
    found = [_told(f) for f in firings.values() if _fires_at(f, now)]
    found.sort(key=lambda a: a.starts_at, reverse=True)
    return found


def _fires_at(firing: _Firing, now: datetime) -> bool:
    started = firing.detected.starts_at <= now
    ended = firing.ended_at is not None and firing.ended_at < now
    return started and not ended and not firing.withdrawn


def _told(firing: _Firing) -> FiringAnomaly:
    data = firing.detected
    return FiringAnomaly(
        name=data.name,
        service=data.service,
        severity=data.severity,
        starts_at=data.starts_at,
        incident_id=firing.incident_id,
        fingerprint=data.fingerprint,
        origin=data.origin,
    )
