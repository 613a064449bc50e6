"""Where a saga stands, from its events alone, and what comes next: a pure fold, so every
crash point is a unit test (as `responder/progress.py` is for investigations).

A saga runs its steps in order. A failed step, or a failed verification after all of them,
compensates the completed steps in reverse order; a compensation that fails is tried again
(`MAX_COMPENSATION_ATTEMPTS` in all), then escalated to a human, and the saga waits for one.
A step or compensation recorded as started but without an outcome is one the orchestrator
died in: it is resumed (the executor is asked what became of its key) rather than run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

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

MAX_COMPENSATION_ATTEMPTS = 3


@dataclass
class StepState:
    keys: set[str] = field(default_factory=set)  # the idempotency key of each try started
    succeeded: SagaStepSucceeded | None = None
    failed: SagaStepFailed | None = None

    @property
    def attempts(self) -> int:
        """Tries started (a copy of an event stored twice counts once: it has the same key)."""
        return len(self.keys)

    @property
    def open(self) -> bool:
        """Started, and no outcome recorded: the orchestrator died in it."""
        return self.attempts > 0 and self.succeeded is None and self.failed is None


@dataclass
class CompensationState:
    attempts: int = 0  # CompensationStarted recorded
    failures: int = 0
    succeeded: bool = False
    escalated: bool = False
    last_error: str = ""
    uncertain: bool = False  # a try may have taken effect: not to be tried again

    @property
    def open(self) -> bool:
        return self.attempts > self.failures and not self.succeeded


@dataclass
class Saga:
    saga_id: str
    proposed: RemediationProposed | None = None
    proposed_at: datetime | None = None
    approved: RemediationApproved | None = None
    approved_at: datetime | None = None
    rejected: RemediationRejected | None = None
    started: SagaStarted | None = None
    started_at: datetime | None = None
    steps: dict[int, StepState] = field(default_factory=dict)
    compensations: dict[int, CompensationState] = field(default_factory=dict)
    measurements: list[tuple[VerificationMeasured, datetime]] = field(default_factory=list)
    verification: VerificationPassed | VerificationFailed | None = None
    ended: SagaCompleted | SagaCompensated | None = None
    last_step_at: datetime | None = None  # when the last step's success was recorded

    def step(self, i: int) -> StepState:
        return self.steps.setdefault(i, StepState())

    def compensation(self, i: int) -> CompensationState:
        return self.compensations.setdefault(i, CompensationState())


def fold(events: list[Event], saga_id: str) -> Saga:
    """The saga `saga_id` as its events (any incident's events, in stream order) tell it."""
    saga = Saga(saga_id)
    for event in events:
        data = event.data
        if getattr(data, "saga_id", None) != saga_id:
            continue
        match data:
            case RemediationProposed():
                if saga.proposed is None:  # another plan under the same id changes nothing
                    saga.proposed, saga.proposed_at = data, event.occurred_at
            case RemediationApproved():
                if saga.approved is None:
                    saga.approved, saga.approved_at = data, event.occurred_at
            case RemediationRejected():
                if saga.started is None:  # once started, only its own failure ends it
                    saga.rejected = saga.rejected or data
            case SagaStarted():
                if saga.started is None:
                    saga.started, saga.started_at = data, event.occurred_at
            case SagaStepStarted():
                saga.step(data.step).keys.add(data.idempotency_key)
            case SagaStepSucceeded():
                saga.step(data.step).succeeded = data
                saga.last_step_at = event.occurred_at
            case SagaStepFailed():
                saga.step(data.step).failed = data
            case CompensationStarted():
                saga.compensation(data.step).attempts += 1
            case CompensationSucceeded():
                saga.compensation(data.step).succeeded = True
            case CompensationFailed():
                comp = saga.compensation(data.step)
                comp.failures += 1
                comp.last_error = data.error
                comp.uncertain = comp.uncertain or data.uncertain
            case CompensationEscalated():
                saga.compensation(data.step).escalated = True
            case VerificationMeasured():
                if data.index == len(saga.measurements):  # a second writer's copy: ignored
                    saga.measurements.append((data, event.occurred_at))
            case VerificationPassed() | VerificationFailed():
                saga.verification = saga.verification or data
            case SagaCompleted() | SagaCompensated():
                saga.ended = saga.ended or data
    return saga


# -- moves ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """Nothing more to do: ended, rejected, or never proposed."""


@dataclass(frozen=True)
class Wait:
    """For an approval (until `until`, then it expires), for the pause to lift, or for a
    human after an escalation."""

    why: str
    until: datetime | None = None


@dataclass(frozen=True)
class Expire:
    """The approval did not come in time, or the plan was never started while it was fresh
    (no orchestrator ran): reject it as expired rather than act on an old diagnosis."""

    why: str


@dataclass(frozen=True)
class Start:
    dry_run: bool


@dataclass(frozen=True)
class RunStep:
    step: int
    attempt: int


@dataclass(frozen=True)
class ResumeStep:
    """Started, outcome never recorded: ask the executor what became of its key."""

    step: int
    attempt: int


@dataclass(frozen=True)
class Verify:
    pass


@dataclass(frozen=True)
class Compensate:
    step: int
    attempt: int


@dataclass(frozen=True)
class ResumeCompensation:
    step: int
    attempt: int


@dataclass(frozen=True)
class Escalate:
    """A compensation failed every try: a human must undo the step."""

    step: int


@dataclass(frozen=True)
class Finish:
    compensated: bool
    reason: str = ""


Move = (
    Done | Wait | Expire | Start | RunStep | ResumeStep | Verify | Compensate
    | ResumeCompensation | Escalate | Finish
)  # fmt: skip


def next_move(
    saga: Saga,
    now: datetime,
    *,
    approval_expiry: timedelta,
    paused: bool = False,
    irreversible: frozenset[int] = frozenset(),
) -> Move:
    """What comes next. `irreversible`: steps whose action has no compensation (they stay
    done). While `paused`, only what was running goes on: nothing new starts."""
    proposed = saga.proposed
    if proposed is None or saga.ended is not None or saga.rejected is not None:
        return Done()
    if saga.started is None:
        assert saga.proposed_at is not None
        until = saga.proposed_at + approval_expiry
        if proposed.mode == "approval":
            in_time = saga.approved_at is not None and saga.approved_at <= until
            if not in_time:  # none yet, or one that came after the plan had expired
                if now >= until:
                    return Expire(f"no approval within {_minutes(approval_expiry)}")
                return Wait("awaiting approval", until)
        elif now >= until:
            return Expire(f"not started within {_minutes(approval_expiry)} of its proposal")
        return Wait("paused") if paused else Start(dry_run=proposed.mode == "dry_run")
    failed = next((i for i, s in sorted(saga.steps.items()) if s.failed), None)
    if failed is not None or isinstance(saga.verification, VerificationFailed):
        return _unwind(saga, paused, irreversible, failed)
    for i in range(len(saga.started.steps)):
        state = saga.steps.get(i)
        if state is None:
            return Wait("paused") if paused else RunStep(i, 1)
        if state.open:
            return ResumeStep(i, state.attempts)
    if saga.started.dry_run or isinstance(saga.verification, VerificationPassed):
        return Finish(compensated=False)
    return Wait("paused") if paused else Verify()


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g} min"


def _unwind(saga: Saga, paused: bool, irreversible: frozenset[int], failed: int | None) -> Move:
    done = sorted((i for i, s in saga.steps.items() if s.succeeded), reverse=True)
    for i in done:
        if i in irreversible:
            continue
        comp = saga.compensations.get(i, CompensationState())
        if comp.succeeded:
            continue
        if comp.open:
            return ResumeCompensation(i, comp.attempts)
        if comp.failures >= MAX_COMPENSATION_ATTEMPTS or comp.uncertain:
            # Tried enough, or a try may have acted: another try could undo twice.
            return Wait("a human must undo a step") if comp.escalated else Escalate(i)
        return Wait("paused") if paused else Compensate(i, comp.attempts + 1)
    if failed is not None and saga.steps[failed].failed.uncertain:  # type: ignore[union-attr]
        # The failed step may have acted, and nothing can undo what is not known: a person.
        checked = saga.compensations.get(failed, CompensationState())
        return Wait("a human must check a step") if checked.escalated else Escalate(failed)
    if failed is not None:
        reason = f"step {failed} failed: {saga.steps[failed].failed.error}"  # type: ignore[union-attr]
    else:
        assert isinstance(saga.verification, VerificationFailed)
        reason = f"verification failed: {saga.verification.reason or saga.verification.check}"
    return Finish(compensated=True, reason=reason)
