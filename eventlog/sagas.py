"""Read models of remediation, as pure folds: one row per saga, one per saga step.

A saga's events all carry its `saga_id` and are of one incident, so they come in stream order;
still, each row is made by the first event that concerns it, whatever its type (a plan refused
when it was proposed has only its `RemediationRejected`). A saga's `status` is a function of
its other columns, so folding its events in one batch or one at a time gives the same row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventlog.envelope import Event
from eventlog.payloads import (
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    VerificationFailed,
    VerificationMeasured,
    VerificationPassed,
)
from eventlog.readmodels import as_json, row_state

# Where a saga stands. The last four are ends: `escalated` waits for a human, so for Vigil it
# is over too (a compensation failed every try; the step is left done).
SAGA_STATUSES = (
    "proposed",  # to start without an approval (auto, dry_run), not started yet
    "awaiting_approval",
    "approved",  # not started yet
    "running",  # its steps are running
    "verifying",  # every step succeeded; recovery is being verified (not in a dry run)
    "compensating",  # a step or the verification failed: the done steps are being undone
    "completed",  # every step succeeded and (unless a dry run) recovery was verified
    "compensated",  # the done steps were undone
    "rejected",  # by a person or by the policy (refused, expired, over the rate limit)
    "escalated",
)
ENDS = frozenset({"completed", "compensated", "rejected"})


@dataclass(frozen=True, slots=True)
class SagaRow:
    saga_id: str
    incident_id: str
    status: str = "proposed"  # one of SAGA_STATUSES
    actions: tuple[str, ...] = ()  # each step's action, in order
    services: tuple[str, ...] = ()  # the services its steps touch (known once started)
    steps: int = 0
    mode: str | None = None  # auto | approval | dry_run
    risk: str | None = None
    rationale: str | None = None
    proposed_by: str | None = None
    dry_run: bool = False
    approved_by: str | None = None
    approved_at: datetime | None = None
    rejected_by: str | None = None
    reason: str | None = None  # why it did not complete: rejection, failure, escalation
    proposed_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None  # when it reached an end (an escalation is one)
    steps_succeeded: int = 0
    failed_step: int | None = None
    steps_escalated: int = 0
    verification: str | None = None  # passed | failed
    verification_check: str | None = None
    verification_observed: float | None = None
    measurements: int = 0


SAGA_EVENTS = (
    RemediationProposed,
    RemediationApproved,
    RemediationRejected,
    SagaStarted,
    SagaStepStarted,
    SagaStepSucceeded,
    SagaStepFailed,
    CompensationStarted,
    CompensationSucceeded,
    CompensationFailed,
    CompensationEscalated,
    VerificationMeasured,
    VerificationPassed,
    VerificationFailed,
    SagaCompleted,
    SagaCompensated,
)


def fold_saga(row: SagaRow | None, events: Sequence[Event]) -> SagaRow:
    """A saga after `events` (all of it, in stream order)."""
    if row is None:
        first = events[0].data
        assert isinstance(first, SAGA_EVENTS)
        row = SagaRow(first.saga_id, events[0].incident_id)
    state = row_state(row)
    for event in events:
        _apply_saga(state, event)
        state["status"] = _status(state)
    return SagaRow(**state)


def _apply_saga(s: dict[str, Any], event: Event) -> None:
    at = event.occurred_at
    match event.data:
        case RemediationProposed() as plan:
            s.update(actions=tuple(step.action for step in plan.steps), steps=len(plan.steps),
                     mode=plan.mode, risk=plan.risk, rationale=plan.rationale or None,
                     proposed_by=plan.by or None,
                     dry_run=plan.mode == "dry_run", proposed_at=at)  # fmt: skip
        case RemediationApproved() as yes if s["approved_by"] is None:
            s.update(approved_by=yes.by, approved_at=at)
        case RemediationRejected() as no if s["started_at"] is None and s["status"] not in ENDS:
            # once started, only its own failure ends it (as responder/saga/progress.py reads it)
            s.update(status="rejected", rejected_by=no.by, reason=no.reason or None, ended_at=at)
        case SagaStarted() as started if s["started_at"] is None:  # a second start is a copy
            s.update(actions=tuple(step.action for step in started.steps),
                     steps=len(started.steps), services=tuple(started.services),
                     dry_run=started.dry_run, started_at=at)  # fmt: skip
        case SagaStepSucceeded():
            s["steps_succeeded"] += 1
        case SagaStepFailed() as failed if s["failed_step"] is None:
            reason = f"step {failed.step} ({failed.action}) failed: {failed.error}"
            s.update(failed_step=failed.step, reason=reason)
        case CompensationEscalated() as gave_up:
            undone = f"step {gave_up.step} not undone after {gave_up.attempts} tries of "
            undone += f"{gave_up.action}: {gave_up.error}"
            reason = f"{s['reason']}; {undone}" if s["reason"] else undone
            s.update(steps_escalated=s["steps_escalated"] + 1, reason=reason, ended_at=at)
        case VerificationMeasured():
            s["measurements"] += 1
        case VerificationPassed() as passed if s["verification"] is None:
            s.update(verification="passed", verification_check=passed.check,
                     verification_observed=passed.observed)  # fmt: skip
        case VerificationFailed() as failed if s["verification"] is None:
            s.update(verification="failed", verification_check=failed.check,
                     verification_observed=failed.observed,
                     reason=s["reason"] or f"verification failed: {failed.reason or failed.check}")  # fmt: skip  # noqa: E501
        case SagaCompleted():
            s.update(status="completed", ended_at=at)
        case SagaCompensated() as undone:
            s.update(status="compensated", reason=undone.reason or s["reason"], ended_at=at)


def _status(s: dict[str, Any]) -> str:
    """Where the saga stands, from the row's other columns (an end, once reached, stays)."""
    if s["status"] in ENDS:
        return str(s["status"])
    if s["steps_escalated"]:
        return "escalated"
    if s["failed_step"] is not None or s["verification"] == "failed":
        return "compensating"
    if s["started_at"] is not None:
        all_done = s["steps_succeeded"] >= s["steps"]
        return "verifying" if all_done and not s["dry_run"] else "running"  # a dry run: no check
    if s["approved_by"] is not None:
        return "approved"
    return "awaiting_approval" if s["mode"] == "approval" else "proposed"


@dataclass(frozen=True, slots=True)
class SagaStepRow:
    saga_id: str
    step: int
    incident_id: str
    action: str
    status: str  # see SAGA_STEP_STATUSES
    params: str | None = None
    idempotency_key: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensated_at: datetime | None = None
    error: str | None = None  # the step's, or its compensation's last
    output: str | None = None
    compensation_action: str | None = None  # the compensating action, its params and key
    compensation_params: str | None = None
    compensation_key: str | None = None
    compensation_attempts: int | None = 0  # None: folded before Vigil kept it


SAGA_STEP_STATUSES = (
    "started", "succeeded", "failed", "compensating", "compensated", "compensation_failed",
    "compensation_escalated",
)  # fmt: skip
SAGA_STEP_EVENTS = (
    SagaStepStarted,
    SagaStepSucceeded,
    SagaStepFailed,
    CompensationStarted,
    CompensationSucceeded,
    CompensationFailed,
    CompensationEscalated,
)


def fold_saga_step(row: SagaStepRow | None, events: Sequence[Event]) -> SagaStepRow:
    """A saga step after `events` (all about it)."""
    if row is None:
        first = events[0].data
        assert isinstance(first, SAGA_STEP_EVENTS)
        row = SagaStepRow(first.saga_id, first.step, events[0].incident_id, first.action, "started")
    state = row_state(row)
    for event in events:
        _apply_step(state, event)
    return SagaStepRow(**state)


def _apply_step(s: dict[str, Any], event: Event) -> None:
    """Only the step's own events name its action: a compensation's events name the
    compensating action (but CompensationEscalated, the step's)."""
    at = event.occurred_at
    match event.data:
        case SagaStepStarted() as started:
            s.update(status="started", action=started.action, params=as_json(started.params),
                     idempotency_key=started.idempotency_key, started_at=at)  # fmt: skip
        case SagaStepSucceeded() as done:
            s.update(status="succeeded", action=done.action, finished_at=at,
                     output=as_json(done.output))  # fmt: skip
        case SagaStepFailed() as failed:
            s.update(status="failed", action=failed.action, finished_at=at, error=failed.error)
        case CompensationStarted() as undo:
            s.update(status="compensating", compensation_action=undo.action,
                     compensation_params=as_json(undo.params),
                     compensation_key=undo.idempotency_key,
                     compensation_attempts=(s["compensation_attempts"] or 0) + 1)  # fmt: skip
        case CompensationSucceeded():
            s.update(status="compensated", compensated_at=at)
        case CompensationFailed() as failed:
            s.update(status="compensation_failed", error=failed.error)
        case CompensationEscalated() as gave_up:
            s.update(status="compensation_escalated", error=gave_up.error)
