"""Asking for a new attempt at an incident's investigation: the CLI's `vigil investigate`, and
the API's later. A running responder takes the attempt up when its InvestigationStarted comes.
"""

from __future__ import annotations

from datetime import datetime

from nats.js import JetStreamContext

from eventlog.envelope import new_event
from eventlog.history import incident_events
from eventlog.payloads import AnomalyDetected, InvestigationStarted
from eventlog.publisher import EventPublisher, WrongLastSequence
from responder.progress import fold


class NoSuchIncident(LookupError):
    """No anomaly was ever recorded for that incident id."""


async def ask_for_attempt(
    js: JetStreamContext,
    incident_id: str,
    *,
    model: str,
    by: str,
    reason: str = "",
    now: datetime | None = None,
) -> InvestigationStarted:
    """Open the incident's next attempt (the CLI's `vigil investigate`, the API's, and `vigil
    eval`'s, whose `now` is a past moment: the attempt's tools look at nothing later; None:
    when the attempt is recorded). Two asks at once open one attempt: the one that loses the
    race answers with the winner's."""
    inv = fold(incident_id, await incident_events(js, incident_id))
    if inv.trigger is None:
        raise NoSuchIncident(f"no incident {incident_id!r}: no anomaly was recorded for it")
    number = inv.current.number + 1 if inv.current else 1
    onset = inv.trigger.data.starts_at if isinstance(inv.trigger.data, AnomalyDetected) else None
    started = InvestigationStarted(
        model=model, attempt=number, reason=reason or f"asked by {by}", requested_by=by,
        onset=onset, now=now,
    )  # fmt: skip
    event = new_event(started, incident_id=incident_id, source="cli")
    try:
        await EventPublisher(js).publish_after(event, inv.last_started_seq)
    except WrongLastSequence:
        # Someone opened an attempt since we read (an ask at the same time, or the responder's
        # first): that one answers this ask too.
        again = fold(incident_id, await incident_events(js, incident_id))
        assert again.current is not None
        return again.current.started
    return started
