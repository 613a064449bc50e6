"""The saga's next move from its events alone: every crash point, approval, expiry, pause,
failure and compensation in reverse, as a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventlog.envelope import new_event
from eventlog.payloads import (
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    Payload,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    SagaCompleted,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    VerificationFailed,
    VerificationPassed,
)
from eventlog.payloads.remediation import RemediationMode
from responder.saga.progress import (
    MAX_COMPENSATION_ATTEMPTS,
    Compensate,
    Done,
    Escalate,
    Expire,
    Finish,
    Move,
    ResumeCompensation,
    ResumeStep,
    RunStep,
    Start,
    Verify,
    Wait,
    fold,
    next_move,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EXPIRY = timedelta(minutes=30)
STEPS = [RemediationAction(action=f"a{i}", params={"service": "checkout"}) for i in range(3)]


def proposed(mode: RemediationMode = "auto") -> RemediationProposed:
    return RemediationProposed(saga_id="s1", steps=STEPS, mode=mode)


def started(i: int, attempt: int = 1) -> SagaStepStarted:
    return SagaStepStarted(
        saga_id="s1", step=i, action=f"a{i}", idempotency_key=f"s1:{i}:{attempt}"
    )


def ok(i: int) -> SagaStepSucceeded:
    return SagaStepSucceeded(saga_id="s1", step=i, action=f"a{i}")


def failed(i: int) -> SagaStepFailed:
    return SagaStepFailed(saga_id="s1", step=i, action=f"a{i}", error="500: no")


def comp(kind: type[Payload], i: int, **more: object) -> Payload:
    return kind(saga_id="s1", step=i, action=f"a{i}", **more)


def move(*payloads: Payload, now: datetime = T0, paused: bool = False,
         irreversible: frozenset[int] = frozenset()) -> Move:  # fmt: skip
    events = [new_event(p, incident_id="inc-1", source="test", occurred_at=T0) for p in payloads]
    other = new_event(SagaCompleted(saga_id="s2"), incident_id="inc-1", source="test")
    saga = fold([*events, other], "s1")  # another saga's events are not this one's
    return next_move(saga, now, approval_expiry=EXPIRY, paused=paused, irreversible=irreversible)


START = SagaStarted(saga_id="s1", steps=STEPS)


def test_nothing_proposed_or_already_over_is_done() -> None:
    assert move() == Done()
    assert move(proposed(), START, ok(0), ok(1), ok(2), VerificationPassed(saga_id="s1", check="x"),
                SagaCompleted(saga_id="s1")) == Done()  # fmt: skip
    assert move(proposed("approval"), RemediationRejected(saga_id="s1", by="ana")) == Done()


def test_approval_waits_until_it_comes_or_expires() -> None:
    assert move(proposed("approval")) == Wait("awaiting approval", T0 + EXPIRY)
    assert move(proposed("approval"), now=T0 + EXPIRY) == Expire("no approval within 30 min")
    approved = RemediationApproved(saga_id="s1", by="ana")
    assert move(proposed("approval"), approved, now=T0 + EXPIRY) == Start(dry_run=False)
    assert move(proposed("dry_run")) == Start(dry_run=True)


def test_a_plan_never_started_while_fresh_expires_rather_than_acting_on_an_old_diagnosis() -> None:
    late = T0 + EXPIRY
    assert move(proposed("auto"), now=late) == Expire("not started within 30 min of its proposal")
    assert move(proposed("dry_run"), now=late) == Expire(
        "not started within 30 min of its proposal"
    )
    assert move(proposed("auto"), START, now=late) == RunStep(0, 1)  # started in time: goes on


def test_steps_run_in_order_then_verification_then_the_end() -> None:
    assert move(proposed()) == Start(dry_run=False)
    assert move(proposed(), START) == RunStep(0, 1)
    assert move(proposed(), START, started(0), ok(0)) == RunStep(1, 1)
    assert move(proposed(), START, started(0), ok(0), started(1), ok(1), started(2), ok(2)) == (
        Verify()
    )
    passed = VerificationPassed(saga_id="s1", check="errors < 1%", observed=0.002)
    assert move(proposed(), START, ok(0), ok(1), ok(2), passed) == Finish(compensated=False)
    dry = SagaStarted(saga_id="s1", steps=STEPS, dry_run=True)
    assert move(proposed("dry_run"), dry, ok(0), ok(1), ok(2)) == Finish(compensated=False)


def test_a_step_started_without_an_outcome_is_resumed_not_run_again() -> None:
    assert move(proposed(), START, started(0)) == ResumeStep(0, 1)
    assert move(proposed(), START, started(0), ok(0), started(1), started(1, 2)) == (
        ResumeStep(1, 2)
    )


def test_a_failed_step_compensates_the_done_ones_in_reverse() -> None:
    history = [proposed(), START, started(0), ok(0), started(1), ok(1), started(2), failed(2)]
    assert move(*history) == Compensate(1, 1)
    history += [comp(CompensationStarted, 1)]
    assert move(*history) == ResumeCompensation(1, 1)  # died in it: ask again
    history += [comp(CompensationSucceeded, 1)]
    assert move(*history) == Compensate(0, 1)
    history += [comp(CompensationStarted, 0), comp(CompensationSucceeded, 0)]
    assert move(*history) == Finish(compensated=True, reason="step 2 failed: 500: no")
    # A step with no compensation stays done; the others are still undone.
    assert move(*history[:8], irreversible=frozenset({1})) == Compensate(0, 1)


def test_a_failed_verification_compensates_every_step() -> None:
    bad = VerificationFailed(saga_id="s1", check="errors < 1%", observed=0.3, reason="3 of 5")
    history = [proposed(), START, ok(0), ok(1), ok(2), bad]
    assert move(*history) == Compensate(2, 1)
    undone = [x for i in (2, 1, 0) for x in (comp(CompensationStarted, i),
                                             comp(CompensationSucceeded, i))]  # fmt: skip
    assert move(*history, *undone) == Finish(compensated=True, reason="verification failed: 3 of 5")


def test_a_compensation_that_keeps_failing_is_escalated_never_forgotten() -> None:
    history: list[Payload] = [proposed(), START, ok(0), started(1), failed(1)]
    for attempt in range(1, MAX_COMPENSATION_ATTEMPTS + 1):
        assert move(*history) == Compensate(0, attempt)
        history += [comp(CompensationStarted, 0), comp(CompensationFailed, 0, error="timeout")]
    assert move(*history) == Escalate(0)
    history.append(comp(CompensationEscalated, 0, attempts=3, error="timeout"))
    assert move(*history) == Wait("a human must undo a step")


@pytest.mark.parametrize(
    ("history", "resumed"),
    [
        ([START, started(0)], ResumeStep(0, 1)),
        ([START, ok(0), started(1), failed(1), comp(CompensationStarted, 0)],
         ResumeCompensation(0, 1)),
    ],
)  # fmt: skip
def test_a_pause_starts_nothing_new_but_lets_the_running_finish(
    history: list[Payload], resumed: Move
) -> None:
    assert move(proposed(), paused=True) == Wait("paused")
    assert move(proposed(), START, paused=True) == Wait("paused")
    assert move(proposed(), START, ok(0), ok(1), ok(2), paused=True) == Wait("paused")
    assert move(proposed(), *history, paused=True) == resumed
    assert move(proposed(), START, ok(0), failed(1), paused=True) == Wait("paused")


def test_a_rejection_after_the_start_changes_nothing() -> None:
    """Only a plan not yet started can be rejected; a running saga ends by its own steps."""
    late = RemediationRejected(saga_id="s1", by="bob", reason="too late")
    assert move(proposed(), START, started(0), ok(0), late) == RunStep(1, 1)


def test_an_approval_that_came_after_the_expiry_does_not_start_the_plan() -> None:
    events = [
        new_event(proposed("approval"), incident_id="inc-1", source="t", occurred_at=T0),
        new_event(RemediationApproved(saga_id="s1", by="ana"), incident_id="inc-1", source="t",
                  occurred_at=T0 + EXPIRY + timedelta(seconds=1)),
    ]  # fmt: skip
    saga = fold(events, "s1")
    late = next_move(saga, T0 + 2 * EXPIRY, approval_expiry=EXPIRY)
    assert late == Expire("no approval within 30 min")
