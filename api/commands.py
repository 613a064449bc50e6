"""Commands of /api/v1: each checked against the current state, then recorded as its fact.

The state is read from the stream (`incident_events`), not from the read model, which lags: an
approval must see the plan proposed a moment ago. Each answer is the fact recorded, as the
timeline shows it (`{"event": TimelineEvent}`, with its stream sequence), and `by` on it is
the token's name. A command the state does not allow is a 409 saying why; an incident with no
anomaly on the stream is a 404.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException
from fastapi import Path as PathParam
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from api.auth import Operator, Reader
from api.context import ApiContext, Context
from api.models import TimelineEvent
from api.problems import problem
from eventlog.envelope import INCIDENT_ID_PATTERN, new_event
from eventlog.history import StoredEvent, incident_events
from eventlog.payloads import ChangeRecorded, IncidentAcknowledged
from eventlog.publisher import EventPublisher, PublishError, WrongLastSequence
from eventlog.readmodels import IncidentRow, fold_incident
from responder.attempts import AttemptRunning, NoSuchIncident, open_attempt
from responder.saga.pause import control_bucket, read_pause, set_pause
from responder.saga.proposals import NotAwaitingApproval, record_decision

SOURCE = "api"
# Changes recorded with an Idempotency-Key: their event id is uuid5(this, "<token name>|<key>").
CHANGE_KEYS = uuid.UUID("4f9d1f0e-5b51-4c43-9b43-7c1e0a3f6d21")
SAGA_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TEXT = 2000  # characters of a comment, reason or description: a sentence, not a file
MAX_NAME = 200  # a service, kind, author or ref
FUTURE_SLACK = timedelta(minutes=5)  # clocks differ; a change further ahead is a mistake

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
IncidentId = Annotated[
    str, PathParam(pattern=INCIDENT_ID_PATTERN, description="letters, digits, _ and -")
]


class Recorded(BaseModel):
    """The fact a command recorded."""

    event: TimelineEvent


class PauseState(BaseModel):
    """The remediation switch as last set (`at`: ISO 8601 UTC)."""

    paused: bool
    by: str
    at: datetime
    reason: str


class _Body(BaseModel):
    # Strict: FastAPI validates the decoded JSON as Python values, and lax pydantic would take
    # "yes" for true or a number for a time; a client that sends those has a bug to hear of.
    model_config = ConfigDict(extra="forbid", strict=True)


def _iso_time(value: Any) -> Any:
    if value is not None and not isinstance(value, str | datetime):
        raise ValueError("write a time as ISO 8601 text with a zone, e.g. 2026-11-30T10:00:00Z")
    return value


class ApproveBody(_Body):
    saga_id: str | None = Field(default=None, pattern=SAGA_ID_PATTERN,
                                description="the plan, when several await approval")  # fmt: skip
    comment: Text = ""


class RejectBody(_Body):
    saga_id: str | None = Field(default=None, pattern=SAGA_ID_PATTERN,
                                description="the plan, when several await approval")  # fmt: skip
    reason: Text = ""


class AcknowledgeBody(_Body):
    comment: Text = ""


class InvestigateBody(_Body):
    reason: Text = ""
    supersede: bool = Field(
        default=False,
        description="open a new attempt even while the current one has no report yet (the "
        "responder ends the running one as superseded); without it that is a 409",
    )


class ChangeBody(_Body):
    """ChangeRecorded's fields; `changed_at` defaults to now, `author` to the token's name."""

    service: Name
    kind: Name = "deploy"
    description: Text = ""
    author: Name | None = None
    changed_at: Annotated[AwareDatetime | None, BeforeValidator(_iso_time)] = Field(
        default=None, strict=False, description="ISO 8601 with a zone"
    )
    ref: Name | None = Field(default=None, description="a version, commit or key=value")

    @model_validator(mode="after")
    def _not_ahead(self) -> ChangeBody:
        if self.changed_at is not None and self.changed_at > datetime.now(UTC) + FUTURE_SLACK:
            raise ValueError("changed_at is in the future: record a change once it is made")
        return self


class PauseBody(_Body):
    reason: Text = ""


UNKNOWN = problem("no anomaly was ever recorded for this incident")
AUTH = {
    401: problem("no bearer token, or one not configured"),
    403: problem("a read token (commands need operate), or a remote client and no tokens"),
}
UNAVAILABLE = {503: problem("NATS did not answer; it may or may not be recorded: retry")}
INCIDENT_COMMAND = AUTH | UNAVAILABLE | {404: UNKNOWN}

router = APIRouter(prefix="/api/v1", tags=["commands"])


@router.post(
    "/incidents/{incident_id}/approve",
    responses=INCIDENT_COMMAND | {409: problem("no plan awaits approval, or several do")},
)
async def approve(
    incident_id: IncidentId, body: ApproveBody, principal: Operator, context: Context
) -> Recorded:
    """Approve the plan that awaits approval (name `saga_id` when several do): records
    RemediationApproved; the orchestrator then runs the plan."""
    return await _decide(context.js, incident_id, True, principal.name, body.comment,
                         body.saga_id, context.approval_expiry)  # fmt: skip


@router.post(
    "/incidents/{incident_id}/reject",
    responses=INCIDENT_COMMAND | {409: problem("no plan awaits approval, or several do")},
)
async def reject(
    incident_id: IncidentId, body: RejectBody, principal: Operator, context: Context
) -> Recorded:
    """Reject the plan that awaits approval: records RemediationRejected; it never runs."""
    return await _decide(context.js, incident_id, False, principal.name, body.reason,
                         body.saga_id, context.approval_expiry)  # fmt: skip


async def _decide(
    js: JetStreamContext, incident_id: str, approve: bool, by: str, reason: str,
    saga_id: str | None, expiry: timedelta,
) -> Recorded:  # fmt: skip
    with _bus_errors():
        try:
            stored = await record_decision(
                js, incident_id, approve=approve, by=by, reason=reason, saga_id=saga_id,
                expiry=expiry,
            )  # fmt: skip
        except NoSuchIncident as exc:
            raise HTTPException(404, str(exc)) from None
        except NotAwaitingApproval as exc:
            raise HTTPException(409, str(exc)) from None
    return Recorded(event=TimelineEvent.of(stored))


@router.post(
    "/incidents/{incident_id}/acknowledge",
    responses=INCIDENT_COMMAND | {409: problem("resolved, or acknowledged already (by whom)")},
)
async def acknowledge(
    incident_id: IncidentId, body: AcknowledgeBody, principal: Operator, context: Context
) -> Recorded:
    """Say someone is on it: records IncidentAcknowledged. Once per incident: a second one is a
    409 naming who acknowledged it; so is acknowledging a resolved incident."""
    with _bus_errors():
        row = await _incident(context.js, incident_id)
        _check_acknowledgeable(row)
        data = IncidentAcknowledged(by=principal.name, comment=body.comment)
        event = new_event(data, incident_id=incident_id, source=SOURCE)
        try:
            # Only if nothing acknowledged it meanwhile (the subject's last sequence is still
            # none): two people acknowledging at once get one fact and one 409.
            ack = await EventPublisher(context.js).publish_after(event, 0)
        except WrongLastSequence:
            _check_acknowledgeable(await _incident(context.js, incident_id))
            raise HTTPException(409, f"incident {incident_id} was acknowledged meanwhile") from None
    return Recorded(event=TimelineEvent.of(StoredEvent(event, ack.seq)))


async def _incident(js: JetStreamContext, incident_id: str) -> IncidentRow:
    events = await incident_events(js, incident_id)
    row = fold_incident(None, [(s.event, s.seq) for s in events])
    if row is None:
        raise HTTPException(404, f"no incident {incident_id!r}: no anomaly was recorded for it")
    return row


def _check_acknowledgeable(row: IncidentRow) -> None:
    if row.acknowledged_by is not None:
        at = row.acknowledged_at.isoformat() if row.acknowledged_at else "?"
        raise HTTPException(
            409, f"incident {row.incident_id} was already acknowledged by "
            f"{row.acknowledged_by} at {at}",
        )  # fmt: skip
    if row.status == "resolved":
        at = row.resolved_at.isoformat() if row.resolved_at else "?"
        raise HTTPException(
            409, f"incident {row.incident_id} is resolved ({row.resolution} at {at}): "
            "there is nothing to acknowledge",
        )  # fmt: skip


@router.post(
    "/incidents/{incident_id}/investigate",
    responses=INCIDENT_COMMAND | {409: problem("an attempt is running (see `supersede`)")},
)
async def investigate(
    incident_id: IncidentId, body: InvestigateBody, principal: Operator, context: Context
) -> Recorded:
    """Open a new attempt at the investigation: records InvestigationStarted, which a running
    responder takes up. While the current attempt has no report yet, a 409 says which, unless
    `supersede` is true."""
    with _bus_errors():
        try:
            stored = await open_attempt(
                context.js, incident_id, model=context.model, by=principal.name,
                reason=body.reason, supersede=body.supersede, source=SOURCE,
            )  # fmt: skip
        except NoSuchIncident as exc:
            raise HTTPException(404, str(exc)) from None
        except AttemptRunning as exc:
            raise HTTPException(409, f"{exc}; wait for it, or ask with supersede") from None
        except WrongLastSequence:
            raise HTTPException(
                409, f"another attempt at incident {incident_id} was opened meanwhile"
            ) from None
    return Recorded(event=TimelineEvent.of(stored))


@router.post("/changes", responses=AUTH | UNAVAILABLE)
async def record_change(
    body: ChangeBody,
    principal: Operator,
    context: Context,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="the same key again (from the same token) records nothing new and "
            "answers with the change first recorded: a pipeline's retry after a 503 is safe",
        ),
    ] = None,
) -> Recorded:
    """Record a deploy or config change (for CI/CD pipelines): ChangeRecorded, which
    investigations read (`recent_changes`). A change belongs to no incident: like `vigil
    demo`'s and `vigil eval`'s, it is recorded under an incident id of its own,
    `change-<12 hex>` (derived from the `Idempotency-Key` header when one is given)."""
    data = ChangeRecorded(
        service=body.service, kind=body.kind, description=body.description,
        author=body.author or principal.name, changed_at=body.changed_at or datetime.now(UTC),
        ref=body.ref,
    )  # fmt: skip
    if idempotency_key is None:
        event = new_event(data, incident_id=f"change-{uuid.uuid4().hex[:12]}", source=SOURCE)
        with _bus_errors():
            ack = await EventPublisher(context.js).publish(event)
        return Recorded(event=TimelineEvent.of(StoredEvent(event, ack.seq)))
    keyed = uuid.uuid5(CHANGE_KEYS, f"{principal.name}|{idempotency_key}")
    incident_id = f"change-{keyed.hex[:12]}"
    event = new_event(data, incident_id=incident_id, source=SOURCE, event_id=keyed)
    with _bus_errors():
        try:  # the first with this key only, however long after (not just the dedup window)
            ack = await EventPublisher(context.js).publish_after(event, 0)
        except WrongLastSequence:
            first = [s for s in await incident_events(context.js, incident_id)
                     if isinstance(s.event.data, ChangeRecorded)]  # fmt: skip
            if not first:
                raise HTTPException(409, "this Idempotency-Key's change is not readable") from None
            return Recorded(event=TimelineEvent.of(first[0]))
    return Recorded(event=TimelineEvent.of(StoredEvent(event, ack.seq)))


@router.post("/remediation/pause", responses=AUTH | UNAVAILABLE)
async def pause(body: PauseBody, principal: Operator, context: Context) -> PauseState:
    """Pause all remediation at once: no new saga step starts anywhere (a running one
    finishes) until resumed. Pausing again records who and why again."""
    return await _switch(context, True, principal.name, body.reason)


@router.post("/remediation/resume", responses=AUTH | UNAVAILABLE)
async def resume(body: PauseBody, principal: Operator, context: Context) -> PauseState:
    """Lift the pause: the sagas it held go on. (The policy file's `paused: true` still
    pauses: that is changed in the file.)"""
    return await _switch(context, False, principal.name, body.reason)


@router.get("/remediation/pause", responses=AUTH | UNAVAILABLE | {404: problem("never set")})
async def pause_state(principal: Reader, context: Context) -> PauseState:
    """The switch as last set; 404 when it was never set (remediation is not paused)."""
    with _bus_errors():
        kv = await control_bucket(context.js, replicas=context.stream_replicas)
        switch = await read_pause(kv)
    if switch is None:
        raise HTTPException(404, "the pause switch was never set: remediation is not paused")
    return PauseState.model_validate(switch.model_dump())


async def _switch(context: ApiContext, paused: bool, by: str, reason: str) -> PauseState:
    with _bus_errors():
        kv = await control_bucket(context.js, replicas=context.stream_replicas)
        switch = await set_pause(kv, paused, by=by, reason=reason)
    return PauseState.model_validate(switch.model_dump())


@contextlib.contextmanager
def _bus_errors() -> Iterator[None]:
    """NATS gone or slow: a 503 (retry), not a 500; nothing half-recorded is claimed."""
    try:
        yield
    except (NatsTimeoutError, NoServersError, ConnectionClosedError, PublishError) as exc:
        raise HTTPException(
            503,
            f"NATS did not answer ({type(exc).__name__}): it may or may not be recorded; retry "
            "(with the same Idempotency-Key, a change is not recorded twice)",
        ) from None
    except APIError as exc:
        raise HTTPException(503, f"JetStream refused: {exc.description or exc}") from None


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
    app.include_router(router)
