"""The demo's telling of a remediation, event by event, in plain lines: what the end-to-end
demo shows, and the turns it rarely takes (a failed step, a compensation that keeps failing,
a plan refused, a recovery told by the alert resolving)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console

from eventlog.envelope import new_event
from eventlog.payloads import (
    AnomalyDetected,
    AnomalyResolved,
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    IncidentResolved,
    Payload,
    RemediationAction,
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
from responder.saga.catalog import load_catalog
from vigil.demo import DEMO_DIR
from vigil.demo_story import Story, Teller

STEPS = [
    RemediationAction(action="deploy_version", params={"service": "checkout", "version": "1.4.0"}),
    RemediationAction(action="deploy_version", params={"service": "search", "version": "0.9.1"}),
]
AT = datetime(2026, 1, 1, tzinfo=UTC)


def told(capsys: pytest.CaptureFixture[str], *facts: Payload) -> tuple[Story, list[str]]:
    """The lines (without their time stamps) a story tells of `facts`, all of incident inc-1,
    whose alert is on frontend."""
    story = Story(Teller(Console(), live=False), broken="checkout",
                  catalog=load_catalog(DEMO_DIR / "actions.yaml"))  # fmt: skip
    alert = AnomalyDetected(origin="alertmanager", name="HighErrorRate", fingerprint="f1",
                            starts_at=AT, service="frontend")  # fmt: skip
    capsys.readouterr()
    for data in (alert, *facts):
        story.tell(new_event(data, incident_id="inc-1", source="test"))
    lines = capsys.readouterr().out.splitlines()[1:]  # after the alert's
    return story, [line.split("s ", 1)[1] if line.startswith("+") else line for line in lines]


def test_a_plan_undone_in_reverse_is_told_step_by_step(capsys: pytest.CaptureFixture[str]) -> None:
    s = "saga-1"
    story, lines = told(
        capsys,
        RemediationProposed(saga_id=s, steps=STEPS, mode="auto", risk="medium",
                            rationale="proposed by ana: a guess"),
        SagaStarted(saga_id=s, steps=STEPS, services=["checkout", "search"]),
        SagaStepStarted(saga_id=s, step=0, action="deploy_version", params=STEPS[0].params,
                        idempotency_key="saga-1:0:1"),
        SagaStepSucceeded(saga_id=s, step=0, action="deploy_version", output={"now": "1.4.0"}),
        SagaStepStarted(saga_id=s, step=1, action="deploy_version", params=STEPS[1].params,
                        idempotency_key="saga-1:1:1"),
        SagaStepFailed(saga_id=s, step=1, action="deploy_version", error="422: no"),
        CompensationStarted(saga_id=s, step=0, action="deploy_version",
                            params={"service": "checkout", "version": "1.5.1"},
                            idempotency_key="saga-1:0:undo:1"),
        CompensationFailed(saga_id=s, step=0, action="deploy_version", error="503: busy"),
        CompensationEscalated(saga_id=s, step=0, action="deploy_version", attempts=3,
                              error="503: busy"),
        CompensationSucceeded(saga_id=s, step=0, action="deploy_version"),
        SagaCompensated(saga_id=s, reason="step 1 failed: 422: no"),
    )  # fmt: skip
    assert lines == [
        'remedy   frontend: deploy_version {"service":"checkout","version":"1.4.0"}, then '
        'deploy_version {"service":"search","version":"0.9.1"} proposed, mode auto, medium '
        "risk, proposed by ana [saga-1] (RemediationProposed)",
        "saga     frontend: started: 2 steps on checkout, search [saga-1] (SagaStarted)",
        'step     frontend: 1/2 deploy_version {"service":"checkout","version":"1.4.0"} '
        "started, idempotency key saga-1:0:1 (SagaStepStarted)",
        'step     frontend: 1/2 deploy_version succeeded: {"now":"1.4.0"} (SagaStepSucceeded)',
        'step     frontend: 2/2 deploy_version {"service":"search","version":"0.9.1"} started, '
        "idempotency key saga-1:1:1 (SagaStepStarted)",
        "step     frontend: 2/2 deploy_version failed: 422: no (SagaStepFailed)",
        'undo     frontend: step 1/2 undone by deploy_version {"service":"checkout","version":'
        '"1.5.1"}, idempotency key saga-1:0:undo:1 (CompensationStarted)',
        "undo     frontend: step 1/2 not undone: 503: busy (CompensationFailed)",
        "undo     frontend: step 1/2 escalated to a human after 3 tries: 503: busy "
        "(CompensationEscalated)",
        "undo     frontend: step 1/2 undone (CompensationSucceeded)",
        "saga     frontend: compensated, every step undone: step 1 failed: 422: no [saga-1] "
        "(SagaCompensated)",
    ]
    assert story.sagas["saga-1"].ended == "SagaCompensated"


def test_a_verification_is_told_measurement_by_measurement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The condition and count are the catalog's (the last step's action that says); a
    measurement that failed says why; a recovery told by the alert says so."""
    rollback = [RemediationAction(action="rollback_deploy", params={"service": "frontend"})]
    q = "sum(rate(x[5s]))"
    story, lines = told(
        capsys,
        RemediationProposed(saga_id="a", steps=rollback, mode="auto", rationale="recommended "
                            "by attempt 1's report: deploy_or_config_change of frontend"),
        VerificationMeasured(saga_id="a", index=0, query=q, observed=0.2, ok=False),
        VerificationMeasured(saga_id="a", index=1, query=q, observed=None, ok=False,
                             error="the query failed: ConnectError"),
        VerificationMeasured(saga_id="a", index=2, query=q, observed=0.0, ok=True),
        VerificationPassed(saga_id="a", check=f"{q} result < 0.05", observed=0.0),
        SagaCompleted(saga_id="a"),
        IncidentResolved(how="remediation"),
        RemediationProposed(saga_id="b", steps=STEPS, mode="auto", rationale="x: y"),
        VerificationPassed(saga_id="b", check="the alert resolved"),
        VerificationFailed(saga_id="d", check=f"{q} empty", reason="2 of 2 measurements failed"),
        RemediationRejected(saga_id="c", by="policy", reason="rate limit: 3 of frontend"),
        AnomalyResolved(origin="alertmanager", name="HighErrorRate", fingerprint="f1",
                        starts_at=AT, ends_at=AT),
    )  # fmt: skip
    assert lines[1:] == [
        "verify   frontend: measurement 1/4: 0.200, fails `result < 0.05` (VerificationMeasured)",
        f"    query: {q}",
        "verify   frontend: measurement 2/4: no value, fails `result < 0.05` (the query failed: "
        "ConnectError) (VerificationMeasured)",
        "verify   frontend: measurement 3/4: 0.000, meets `result < 0.05` (VerificationMeasured)",
        "verify   frontend: passed: 1 of 3 measurements met `result < 0.05` (VerificationPassed)",
        "saga     frontend: completed [a] (SagaCompleted)",
        "resolved inc-1 (frontend): remediation by vigil (IncidentResolved)",
        lines[8],  # b's proposal
        "verify   frontend: passed: the alert resolved (VerificationPassed)",
        "verify   frontend: failed: 2 of 2 measurements failed (VerificationFailed)",
        "refused  frontend: rate limit: 3 of frontend [c] (RemediationRejected by policy)",
        "alert    HighErrorRate on frontend resolved (AnomalyResolved, incident inc-1)",
    ]
    assert lines[0].endswith("recommended by attempt 1's report [a] (RemediationProposed)")
    assert not story.firing and "inc-1" in story.resolved
    ended = [t.ended for t in story.sagas_of("inc-1")]
    assert ended == ["SagaCompleted", None, None, "RemediationRejected"]
