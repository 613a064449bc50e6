"""Proposing a remediation plan: `vigil propose`'s, the API's (later) and the report's.

A plan is checked against the catalog first (`plan.check_plan`). One that passes is recorded
as `RemediationProposed`, its mode the strictest of its steps' by the policy (each step's
risk on the service it touches) and the mode asked for: nobody can ask their way out of an
approval. One
that does not is recorded too, as `RemediationRejected` by `policy` with the reason: a
refusal is a fact of the incident like any other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from eventlog.envelope import Event, new_event, subject_for
from eventlog.history import StoredEvent, incident_events
from eventlog.payloads import (
    AnomalyDetected,
    AnomalyPredicted,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
)
from eventlog.payloads.remediation import RemediationMode
from eventlog.publisher import EventPublisher, WrongLastSequence
from responder.attempts import NoSuchIncident
from responder.saga.catalog import Catalog
from responder.saga.plan import PlanRefused, check_plan
from responder.saga.policy import Policy
from responder.saga.progress import Saga, fold

SOURCE = "saga"
DEFAULT_EXPIRY = Policy().approval_expiry
NAMESPACE = uuid.UUID("0d7b3c52-96a1-4f0e-8a4b-5e2f1c9d7a63")


@dataclass(frozen=True)
class Proposal:
    saga_id: str
    accepted: RemediationProposed | None
    refused: RemediationRejected | None


async def propose(
    js: JetStreamContext,
    incident_id: str,
    steps: list[RemediationAction],
    *,
    catalog: Catalog,
    policy: Policy,
    by: str,
    rationale: str = "",
    mode: RemediationMode | None = None,
    saga_id: str | None = None,
) -> Proposal:
    """Record the plan for the incident, accepted or refused (see the module's docstring).
    `saga_id`: given, proposing again records nothing new. NoSuchIncident when no anomaly was
    ever recorded for the incident."""
    service = await service_of(js, incident_id)
    saga_id = saga_id or f"saga-{uuid.uuid4().hex[:12]}"
    try:
        plan = check_plan(catalog, steps, incident_service=service)
    except PlanRefused as exc:
        refused = RemediationRejected(saga_id=saga_id, by="policy", reason=str(exc))
        await _record(js, incident_id, refused)
        return Proposal(saga_id, None, refused)
    decided = policy.mode_for_plan(plan.targets, plan.risks, mode)
    accepted = RemediationProposed(
        saga_id=saga_id, steps=plan.steps, mode=decided, risk=plan.risk,
        rationale=rationale or f"proposed by {by}", by=by,
    )  # fmt: skip
    await _record(js, incident_id, accepted)
    return Proposal(saga_id, accepted, None)


async def service_of(js: JetStreamContext, incident_id: str) -> str | None:
    """The incident's service (its first anomaly's); NoSuchIncident if it has no anomaly."""
    events = [s.event for s in await incident_events(js, incident_id)]
    if not any(isinstance(e.data, AnomalyDetected | AnomalyPredicted) for e in events):
        raise NoSuchIncident(f"no incident {incident_id!r}: no anomaly was recorded for it")
    return service_of_events(events)


def service_of_events(events: list[Event]) -> str | None:
    anomalies = (AnomalyDetected, AnomalyPredicted)
    return next((e.data.service for e in events if isinstance(e.data, anomalies)), None)


async def _record(
    js: JetStreamContext,
    incident_id: str,
    data: RemediationProposed | RemediationApproved | RemediationRejected,
) -> StoredEvent:
    event = new_event(
        data, incident_id=incident_id, source=SOURCE, event_id=_id_of(data, incident_id)
    )
    ack = await EventPublisher(js).publish(event)
    return StoredEvent(event, ack.seq)  # a duplicate's ack carries the first one's seq


def _id_of(
    data: RemediationProposed | RemediationApproved | RemediationRejected, incident_id: str
) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{incident_id}|{data.saga_id}|{type(data).__name__}")


class NotAwaitingApproval(ValueError):
    """Nothing of the incident waits for a decision (or the saga named does not); says why."""


class DecisionContended(NotAwaitingApproval):
    """The incident's events kept arriving while a decision was checked; asking again works."""


DECISION_TRIES = 5


async def decide(
    js: JetStreamContext,
    incident_id: str,
    *,
    approve: bool,
    by: str,
    reason: str = "",
    saga_id: str | None = None,
    expiry: timedelta = DEFAULT_EXPIRY,
) -> RemediationApproved | RemediationRejected:
    """Approve or reject the plan of the incident that awaits approval (`saga_id` when there are
    several); a plan proposed more than `expiry` ago has expired and awaits nothing.
    NoSuchIncident, or NotAwaitingApproval naming what there is."""
    recorded = await record_decision(
        js, incident_id, approve=approve, by=by, reason=reason, saga_id=saga_id, expiry=expiry
    )
    assert isinstance(recorded.event.data, RemediationApproved | RemediationRejected)
    return recorded.event.data


async def record_decision(
    js: JetStreamContext,
    incident_id: str,
    *,
    approve: bool,
    by: str,
    reason: str = "",
    saga_id: str | None = None,
    expiry: timedelta = DEFAULT_EXPIRY,
) -> StoredEvent:
    """`decide`, answering with the event recorded and its stream sequence (the API says
    which event its command produced).

    The decision is appended only if no event of the incident came after those it was
    checked against (compare-and-set on `vigil.evt.<incident>.>`), so an approval and a
    rejection made at once cannot both be recorded: the second is checked again, sees the
    first, and is refused (NotAwaitingApproval). DecisionContended after several tries."""
    for _ in range(DECISION_TRIES):
        stored = await incident_events(js, incident_id)
        data = _decision(
            [s.event for s in stored], incident_id, approve=approve, by=by, reason=reason,
            saga_id=saga_id, expiry=expiry,
        )  # fmt: skip
        event = new_event(
            data, incident_id=incident_id, source=SOURCE, event_id=_id_of(data, incident_id)
        )
        last = max((s.seq for s in stored), default=0)
        try:
            ack = await EventPublisher(js).publish_after(
                event, last, on=subject_for(incident_id, ">")
            )
        except WrongLastSequence:
            continue  # the incident moved on meanwhile: check again against what it is now
        return StoredEvent(event, ack.seq)
    raise DecisionContended(
        f"incident {incident_id} kept changing while the decision was checked; try again"
    )


def _decision(
    events: list[Event],
    incident_id: str,
    *,
    approve: bool,
    by: str,
    reason: str,
    saga_id: str | None,
    expiry: timedelta,
) -> RemediationApproved | RemediationRejected:
    if not any(isinstance(e.data, AnomalyDetected | AnomalyPredicted) for e in events):
        raise NoSuchIncident(f"no incident {incident_id!r}: no anomaly was recorded for it")
    now = datetime.now(UTC)
    waiting = [sid for sid in saga_ids(events) if _awaits_approval(fold(events, sid), now - expiry)]
    if saga_id is not None:
        if saga_id not in waiting:
            raise NotAwaitingApproval(f"{saga_id} of incident {incident_id} awaits no approval")
        waiting = [saga_id]
    if not waiting:
        raise NotAwaitingApproval(f"no plan of incident {incident_id} awaits approval")
    if len(waiting) > 1:
        raise NotAwaitingApproval(f"several plans await approval ({', '.join(waiting)}): name one")
    data: RemediationApproved | RemediationRejected
    if approve:
        data = RemediationApproved(saga_id=waiting[0], by=by, comment=reason)
    else:
        data = RemediationRejected(saga_id=waiting[0], by=by, reason=reason)
    return data


def saga_ids(events: list[Event]) -> list[str]:
    return list(
        dict.fromkeys(e.data.saga_id for e in events if isinstance(e.data, RemediationProposed))
    )


def _awaits_approval(saga: Saga, since: datetime) -> bool:
    return (
        saga.proposed is not None and saga.proposed.mode == "approval" and saga.approved is None
        and saga.rejected is None and saga.started is None
        and saga.proposed_at is not None and saga.proposed_at > since
    )  # fmt: skip
