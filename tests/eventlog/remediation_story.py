"""Test data: past remediations of a few incidents, told as the saga orchestrator tells them
(responder/saga/orchestrator.py), each ending its own way: worked after an approval,
compensated after a failed step and then worked, escalated, rejected, refused, a dry run, one
still running, one undone after a failed verification."""

from __future__ import annotations

from eventlog.envelope import Event
from eventlog.payloads import (
    AnomalyDetected,
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    IncidentResolved,
    Payload,
    RemediationAction,
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
from tests.eventlog.samples import T0, event

P99 = "histogram_quantile(0.99, rate(latency_bucket[5m])) < 0.5"


def rollback(service: str = "checkout") -> RemediationAction:
    return RemediationAction(action="rollback_deploy", params={"service": service, "to": "v1"},
                             compensation="rollforward_deploy")  # fmt: skip


def restart(service: str = "checkout") -> RemediationAction:
    return RemediationAction(action="restart", params={"service": service},
                             compensation="restore_replicas")  # fmt: skip


SCALE = RemediationAction(action="scale_up", params={"service": "checkout", "replicas": 6},
                          compensation="scale_down")  # fmt: skip


class Teller:
    """Events of one incident from `start` (minutes after T0), each `at` minutes after it."""

    def __init__(self, incident: str, start: float) -> None:
        self.incident, self.start = incident, start
        self.events: list[Event] = []

    def __call__(self, at: float, data: Payload) -> Teller:
        self.events.append(event(data, self.incident, self.start + at))
        return self

    def alert(self, service: str) -> Teller:
        fired = AnomalyDetected(origin="alertmanager", name=f"{service.title()}Errors",
                                fingerprint=f"fp-{self.incident}", starts_at=T0,
                                service=service, severity="critical")  # fmt: skip
        return self(0, fired)

    def ran(self, at: float, saga: str, i: int, step: RemediationAction, ok: bool = True) -> None:
        """Step `i` started at `at` and its outcome one minute later."""
        self(at, SagaStepStarted(saga_id=saga, step=i, action=step.action, params=step.params,
                                 idempotency_key=f"{saga}/{i}/1"))  # fmt: skip
        outcome: Payload = (
            SagaStepSucceeded(saga_id=saga, step=i, action=step.action, output={"previous": "v2"})
            if ok else SagaStepFailed(saga_id=saga, step=i, action=step.action, error="quota")
        )  # fmt: skip
        self(at + 1, outcome)

    def undo(
        self, at: float, saga: str, i: int, action: str, tries: int = 1, ok: bool = True
    ) -> None:
        """Step `i` undone by `action`, failing every try but the last when `ok`."""
        for n in range(1, tries + 1):
            self(at, CompensationStarted(saga_id=saga, step=i, action=action,
                                         params={"service": "checkout", "to": "v2"},
                                         idempotency_key=f"{saga}/{i}/undo/{n}"))  # fmt: skip
            if ok and n == tries:
                self(at + 0.5, CompensationSucceeded(saga_id=saga, step=i, action=action))
            else:
                self(at + 0.5, CompensationFailed(saga_id=saga, step=i, action=action,
                                                  error="404: no such deployment"))  # fmt: skip
            at += 1


def _worked_after_approval() -> Teller:
    """inc-a: a rollback approved by alice, verified by two measurements: 3.5 min to run."""
    t = Teller("inc-a", 0).alert("checkout")
    t(1, RemediationProposed(saga_id="sa-1", steps=[rollback()], mode="approval", risk="medium",
                             rationale="deploy v2 raised p99", by="responder"))  # fmt: skip
    t(2, RemediationApproved(saga_id="sa-1", by="alice"))
    t(3, SagaStarted(saga_id="sa-1", steps=[rollback()], services=["checkout"]))
    t.ran(3, "sa-1", 0, rollback())
    for index, at in enumerate((5, 6)):
        t(at, VerificationMeasured(saga_id="sa-1", index=index, query="p99", observed=0.3, ok=True))
    t(6, VerificationPassed(saga_id="sa-1", check=P99, observed=0.3))
    t(6.5, SagaCompleted(saga_id="sa-1"))
    return t(6.6, IncidentResolved(how="remediation", by="vigil"))


def _compensated_then_worked() -> Teller:
    """inc-b: rollback then scale-up; the scale-up fails, the rollback is undone (2 min); a
    second plan, the rollback alone, works (4 min)."""
    t = Teller("inc-b", 100).alert("checkout")
    t(1, RemediationProposed(saga_id="sb-1", steps=[rollback(), SCALE], mode="auto"))
    t(2, SagaStarted(saga_id="sb-1", steps=[rollback(), SCALE], services=["checkout"]))
    t.ran(2, "sb-1", 0, rollback())
    t.ran(3, "sb-1", 1, SCALE, ok=False)
    t.undo(3.5, "sb-1", 0, "rollforward_deploy")
    t(4, SagaCompensated(saga_id="sb-1", reason="step 1 failed: quota"))
    t(10, RemediationProposed(saga_id="sb-2", steps=[rollback()], mode="auto"))
    t(11, SagaStarted(saga_id="sb-2", steps=[rollback()], services=["checkout"]))
    t.ran(11, "sb-2", 0, rollback())
    t(15, VerificationPassed(saga_id="sb-2", check="the alert resolved"))
    t(15, SagaCompleted(saga_id="sb-2"))
    return t(15.1, IncidentResolved(how="remediation", by="vigil"))


def _escalated() -> Teller:
    """inc-c: a restart that does not help and whose undo fails three times."""
    t = Teller("inc-c", 200).alert("checkout")
    t(1, RemediationProposed(saga_id="sc-1", steps=[restart()], mode="auto"))
    t(2, SagaStarted(saga_id="sc-1", steps=[restart()], services=["checkout"]))
    t.ran(2, "sc-1", 0, restart())
    t(4, VerificationMeasured(saga_id="sc-1", index=0, query="p99", observed=2.4, ok=False))
    t(4, VerificationFailed(saga_id="sc-1", check=P99, observed=2.4,
                            reason="1 of 1 measurements failed"))  # fmt: skip
    t.undo(5, "sc-1", 0, "restore_replicas", tries=3, ok=False)
    esc = CompensationEscalated(saga_id="sc-1", step=0, action="restore_replicas", attempts=3,
                                error="404: no such deployment")  # fmt: skip
    return t(8, esc)


def _rejected_and_refused() -> Teller:
    """inc-d (payments): a restart bob rejects; a plan the policy refused as it was proposed."""
    t = Teller("inc-d", 300).alert("payments")
    t(1, RemediationProposed(saga_id="sd-1", steps=[restart("payments")], mode="approval"))
    t(3, RemediationRejected(saga_id="sd-1", by="bob", reason="not during the sale"))
    return t(4, RemediationRejected(saga_id="sd-2", by="policy",
                                    reason="step 0 ('nuke'): no such action in the catalog"))  # fmt: skip  # noqa: E501


def _dry_run_and_running() -> list[Teller]:
    """inc-e: a dry run of the rollback; inc-f: a rollback whose step is running."""
    e = Teller("inc-e", 400).alert("checkout")
    e(1, RemediationProposed(saga_id="se-1", steps=[rollback()], mode="dry_run"))
    e(2, SagaStarted(saga_id="se-1", steps=[rollback()], dry_run=True, services=["checkout"]))
    e.ran(2, "se-1", 0, rollback())
    e(3.2, SagaCompleted(saga_id="se-1"))
    f = Teller("inc-f", 500).alert("checkout")
    f(1, RemediationProposed(saga_id="sf-1", steps=[rollback()], mode="auto"))
    f(2, SagaStarted(saga_id="sf-1", steps=[rollback()], services=["checkout"]))
    f(2, SagaStepStarted(saga_id="sf-1", step=0, action="rollback_deploy",
                         idempotency_key="sf-1/0/1"))  # fmt: skip
    return [e, f]


def _verification_failed() -> Teller:
    """inc-g: a rollback that does not bring p99 down, undone: 5 min."""
    t = Teller("inc-g", 600).alert("checkout")
    t(1, RemediationProposed(saga_id="sg-1", steps=[rollback()], mode="auto"))
    t(2, SagaStarted(saga_id="sg-1", steps=[rollback()], services=["checkout"]))
    t.ran(2, "sg-1", 0, rollback())
    t(5, VerificationFailed(saga_id="sg-1", check=P99, observed=1.9, reason="2 of 3 failed"))
    t.undo(6, "sg-1", 0, "rollforward_deploy")
    return t(7, SagaCompensated(saga_id="sg-1", reason="verification failed: 2 of 3 failed"))


def remediation_story() -> list[Event]:
    """Every incident's events, one incident after another (as the stream holds them)."""
    tellers = [
        _worked_after_approval(), _compensated_then_worked(), _escalated(),
        _rejected_and_refused(), *_dry_run_and_running(), _verification_failed(),
    ]  # fmt: skip
    return [e for t in tellers for e in t.events]
