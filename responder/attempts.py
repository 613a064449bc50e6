"""Asking for a new attempt at an incident's investigation: the CLI's `vigil investigate`, and
the API's. A running responder takes the attempt up when its InvestigationStarted comes.
"""

from __future__ import annotations

from datetime import datetime

from nats.js import JetStreamContext

from eventlog.envelope import new_event
from eventlog.history import StoredEvent, incident_events
from eventlog.payloads import AnomalyDetected, InvestigationStarted
from eventlog.publisher import EventPublisher, WrongLastSequence
from responder.progress import fold


class NoSuchIncident(LookupError):
    """No anomaly was ever recorded for that incident id."""


class AttemptRunning(ValueError):
    """The incident's current attempt has no report yet; says which and since when."""


async def ask_for_attempt(
    js: JetStreamContext,
    incident_id: str,
    *,
    model: str,
    by: str,
    reason: str = "",
    now: datetime | None = None,
) -> InvestigationStarted:
    """Open the incident's next attempt (the CLI's `vigil investigate`, and `vigil eval`'s,
    whose `now` is a past moment: the attempt's tools look at nothing later; None: when the
    attempt is recorded). A running attempt is superseded (the responder concludes it). Two
    asks at once open one attempt: the one that loses the race answers with the winner's."""
    try:
        stored = await open_attempt(
            js, incident_id, model=model, by=by, reason=reason, now=now, supersede=True
        )
    except WrongLastSequence:
        # Someone opened an attempt since we read (an ask at the same time, or the responder's
        # first): that one answers this ask too.
        again = fold(incident_id, await incident_events(js, incident_id))
        assert again.current is not None
        return again.current.started
    assert isinstance(stored.event.data, InvestigationStarted)
    return stored.event.data


async def open_attempt(
    js: JetStreamContext,
    incident_id: str,
    *,
    model: str,
    by: str,
    reason: str = "",
    now: datetime | None = None,
    supersede: bool = False,
    source: str = "cli",
) -> StoredEvent:
    """Record the incident's next InvestigationStarted; the event and its stream sequence.

    NoSuchIncident; AttemptRunning when the current attempt has no report yet, unless
    `supersede`; WrongLastSequence when another attempt was opened since the incident was read.
    """
    inv = fold(incident_id, await incident_events(js, incident_id))
    if inv.trigger is None:
        raise NoSuchIncident(f"no incident {incident_id!r}: no anomaly was recorded for it")
    current = inv.current
    if current is not None and current.concluded is None and not supersede:
        who = f" by {current.started.requested_by}" if current.started.requested_by else ""
        raise AttemptRunning(
            f"attempt {current.number} of incident {incident_id} (opened{who} at "
            f"{current.started_at.isoformat()}) has no report yet"
        )
    number = current.number + 1 if current else 1
    onset = inv.trigger.data.starts_at if isinstance(inv.trigger.data, AnomalyDetected) else None
    started = InvestigationStarted(
        model=model, attempt=number, reason=reason or f"asked by {by}", requested_by=by,
        onset=onset, now=now,
    )  # fmt: skip
    event = new_event(started, incident_id=incident_id, source=source)
    ack = await EventPublisher(js).publish_after(event, inv.last_started_seq)
    return StoredEvent(event, ack.seq)
