"""One incident as the stream tells it now: its latest report and its sagas (the read model
lags; an approval button must not). Pure functions over the incident's events."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from api.models import Saga, SagaStep
from eventlog.envelope import Event
from eventlog.payloads import RemediationProposed, RootCauseConcluded, SagaStarted
from eventlog.sagas import SAGA_EVENTS, SAGA_STEP_EVENTS, fold_saga, fold_saga_step
from responder.saga.progress import Wait, next_move
from responder.saga.progress import fold as saga_progress


def latest_report(events: list[Event]) -> RootCauseConcluded | None:
    """The last RootCauseConcluded recorded (the latest attempt's answer), if any."""
    return next((e.data for e in reversed(events) if isinstance(e.data, RootCauseConcluded)), None)


def sagas_of(events: list[Event], now: datetime, approval_expiry: timedelta) -> list[Saga]:
    """Every saga of the incident in the order first recorded, plans refused at proposal too.

    `status` is the read model's vocabulary (eventlog/sagas.py); `expires_at` is set while a
    plan awaits an approval that can still come (as the orchestrator decides it)."""
    by_saga: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if isinstance(event.data, SAGA_EVENTS):
            by_saga[event.data.saga_id].append(event)
    return [_saga(sid, own, now, approval_expiry) for sid, own in by_saga.items()]


def _saga(saga_id: str, events: list[Event], now: datetime, expiry: timedelta) -> Saga:
    row = fold_saga(None, events)
    move = next_move(saga_progress(events, saga_id), now, approval_expiry=expiry)
    # Only the wait for an approval has an end (`until`): the other waits are for people.
    expires_at = move.until if isinstance(move, Wait) else None
    return Saga(
        saga_id=saga_id, status=row.status, mode=row.mode, risk=row.risk,
        proposed_by=row.proposed_by, rationale=row.rationale,
        steps=_steps(events), expires_at=expires_at,
    )  # fmt: skip


def _steps(events: list[Event]) -> list[SagaStep]:
    """The plan's steps (as started, else as proposed), each with its step row's status."""
    plan = next((e.data.steps for e in events if isinstance(e.data, SagaStarted)), None)
    if plan is None:
        plan = next((e.data.steps for e in events if isinstance(e.data, RemediationProposed)), [])
    by_step: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        if isinstance(event.data, SAGA_STEP_EVENTS):
            by_step[event.data.step].append(event)
    statuses = {i: fold_saga_step(None, own).status for i, own in by_step.items()}
    return [
        SagaStep(step=i, action=a.action, params=a.params, status=statuses.get(i, "pending"))
        for i, a in enumerate(plan)
    ]


def awaiting_approval(sagas: list[Saga]) -> list[str]:
    """The sagas a decision can still be given for (not expired)."""
    return [s.saga_id for s in sagas if s.expires_at is not None]
