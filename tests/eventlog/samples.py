"""One valid payload per event type, and small builders for test stories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from eventlog.envelope import Event, new_event
from eventlog.payloads import (
    AgentStep,
    AnomalyDetected,
    AnomalyPredicted,
    AnomalyResolved,
    AnomalyWithdrawn,
    ChangeRecorded,
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    Hypothesis,
    IncidentAcknowledged,
    IncidentResolved,
    InvestigationStarted,
    NotificationSent,
    Payload,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    RootCauseConcluded,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
    VerificationFailed,
    VerificationMeasured,
    VerificationPassed,
)
from eventlog.payloads.investigation import Category, RootCauseReport

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
STEP = RemediationAction(action="restart", params={"service": "api"}, compensation="noop")


def agent_step(step: int = 0, attempt: int = 1, model: str = "m", **usage: Any) -> AgentStep:
    """A small model request and response, shaped like pydantic-ai's message JSON."""
    request = {"kind": "request", "parts": [{"part_kind": "user-prompt", "content": "why?"}]}
    response = {"kind": "response", "model_name": model,
                "parts": [{"part_kind": "text", "content": f"step {step}"}]}  # fmt: skip
    return AgentStep(attempt=attempt, step=step, turn=step, model=model, request=request,
                     response=response, **usage)  # fmt: skip


def concluded(
    category: Category = "deploy_or_config_change",
    service: str | None = "api",
    confidence: float = 0.9,
    *,
    summary: str = "p99 rose after the deploy",
    **fields: Any,
) -> RootCauseConcluded:
    """An attempt's conclusion whose top hypothesis is (category, service, confidence)."""
    top = Hypothesis(category=category, service=service, confidence=confidence,
                     explanation="p99 0.2s -> 2.4s after v2", evidence=["c1"])  # fmt: skip
    other = Hypothesis(category="unknown", confidence=0.05, explanation="nothing else moved")
    partial = bool(fields.get("partial_reason"))
    report = RootCauseReport(summary=summary, hypotheses=[top, other], partial=partial)
    return RootCauseConcluded(report=report, **fields)


SAMPLES: list[Payload] = [
    AnomalyDetected(origin="alertmanager", name="HighCPU", fingerprint="f1", starts_at=T0,
                    labels={"service": "api"}, service="api", severity="critical"),
    AnomalyResolved(origin="alertmanager", name="HighCPU", fingerprint="f1", starts_at=T0,
                    ends_at=T0 + timedelta(minutes=5)),
    AnomalyWithdrawn(origin="alertmanager", name="HighCPU", fingerprint="f2", starts_at=T0),
    AnomalyPredicted(name="DiskFull", fingerprint="d1", current_value=0.8, threshold=0.95,
                     predicted_crossing_at=T0 + timedelta(hours=2), horizon_seconds=14400),
    InvestigationStarted(model="builtin"),
    agent_step(0, model="builtin", input_tokens=120, output_tokens=30, cost=0.001),
    ToolRequested(tool_call_id="c1", tool_name="prom_query", args={"q": "up"}, attempt=1),
    ToolCompleted(tool_call_id="c1", tool_name="prom_query", result=[1, 2], duration_ms=4.5),
    ToolFailed(tool_call_id="c2", tool_name="logs", error="timeout", timed_out=True),
    concluded(model="builtin", model_requests=2, tool_calls=2, partial_reason="tool timeout"),
    RemediationProposed(saga_id="s1", steps=[STEP], mode="approval"),
    RemediationApproved(saga_id="s1", by="alice"),
    RemediationRejected(saga_id="s1", by="bob", reason="no"),
    SagaStarted(saga_id="s1", steps=[STEP]),
    SagaStepStarted(saga_id="s1", step=0, action="restart", idempotency_key="s1/0"),
    SagaStepSucceeded(saga_id="s1", step=0, action="restart"),
    SagaStepFailed(saga_id="s1", step=1, action="scale", error="quota"),
    CompensationStarted(saga_id="s1", step=0, action="restart"),
    CompensationSucceeded(saga_id="s1", step=0, action="restart"),
    CompensationFailed(saga_id="s1", step=0, action="restart", error="gone"),
    CompensationEscalated(saga_id="s1", step=0, action="restart", attempts=3, error="gone"),
    VerificationMeasured(saga_id="s1", index=0, query="up", observed=1.0, ok=True),
    VerificationPassed(saga_id="s1", check="p99 < 1s", observed=0.4),
    VerificationFailed(saga_id="s1", check="p99 < 1s", observed=2.0),
    SagaCompleted(saga_id="s1"),
    SagaCompensated(saga_id="s1", reason="verification failed"),
    NotificationSent(channel="slack", target="#incidents", milestone="opened", thread_ts="1.2"),
    IncidentAcknowledged(by="alice"),
    IncidentResolved(how="manual", by="alice"),
    ChangeRecorded(service="api", description="deploy v2", changed_at=T0),
]  # fmt: skip


def event(data: Payload, incident: str = "inc-1", minute: float = 0.0) -> Event:
    return new_event(
        data, incident_id=incident, source="test", occurred_at=T0 + timedelta(minutes=minute)
    )


def steps(n: int, incident: str = "inc-1") -> list[Event]:
    """n small events, as many as a test needs."""
    return [event(agent_step(i), incident) for i in range(n)]
