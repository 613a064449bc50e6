"""Asking for a new attempt at an incident's investigation: the CLI's `vigil investigate`, and
the API's later. A running responder takes the attempt up when its InvestigationStarted comes.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from eventlog.envelope import new_event
from eventlog.history import incident_events
from eventlog.payloads import AnomalyDetected, InvestigationStarted
from eventlog.publisher import EventPublisher, WrongLastSequence
from responder.progress import fold


class NoSuchIncident(LookupError):
    """No anomaly was ever recorded for that incident id."""


async def ask_for_attempt(
    js: JetStreamContext, incident_id: str, *, model: str, by: str, reason: str = ""
) -> InvestigationStarted:
    """Open the incident's next attempt (the CLI's `vigil investigate`, and the API's)."""
    publisher = EventPublisher(js)
    for _ in range(5):  # a race with another opener: read again, open the one after
        inv = fold(incident_id, await incident_events(js, incident_id))
        if inv.trigger is None:
            raise NoSuchIncident(f"no incident {incident_id!r}: no anomaly was recorded for it")
        number = inv.current.number + 1 if inv.current else 1
        started = InvestigationStarted(
            model=model,
            attempt=number,
            reason=reason or f"asked by {by}",
            requested_by=by,
            now=None,
            onset=inv.trigger.data.starts_at
            if isinstance(inv.trigger.data, AnomalyDetected)
            else None,
        )
        event = new_event(started, incident_id=incident_id, source="cli")
        try:
            await publisher.publish_after(event, inv.last_started_seq)
        except WrongLastSequence:
            continue
        return started
    raise RuntimeError(f"incident {incident_id}: attempts kept being opened by others")
