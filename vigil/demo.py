"""`vigil demo`: one incident told as events, end to end through the real backbone.

Until the responder and the webhook exist, the demo plays their part: it appends the events
an alert, an investigation and a remediation would produce, lets the projector fold them into
DuckDB, and shows the result with the same read-only SQL an analyst would use.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

from eventlog.envelope import Event, new_event
from eventlog.payloads import (
    AgentStep,
    AnomalyDetected,
    AnomalyResolved,
    ChangeRecorded,
    Hypothesis,
    IncidentResolved,
    InvestigationStarted,
    RemediationAction,
    RemediationProposed,
    RootCauseConcluded,
    SagaCompleted,
    SagaStarted,
    SagaStepStarted,
    SagaStepSucceeded,
    ToolCompleted,
    ToolRequested,
    VerificationPassed,
)

DEMO_QUERIES = {
    "incidents": "SELECT status, title, service, root_cause, "
    "round(root_cause_confidence, 2) AS confidence, resolution FROM incidents",
    "time to resolve": "SELECT * FROM mttr_by_service",
    "tool calls": "SELECT tool_name, status, duration_ms FROM tool_calls ORDER BY requested_at",
    "saga steps": "SELECT saga_id, step, action, status FROM saga_steps ORDER BY step",
    "events by type": "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY min(seq)",
}


def demo_incident(started: datetime | None = None) -> list[Event]:
    """The checkout service's p99 latency breaches after a deploy; rollback fixes it."""
    t0 = started or datetime.now(UTC).replace(microsecond=0)
    incident = "demo-" + hashlib.sha256(t0.isoformat().encode()).hexdigest()[:12]
    story: list[Event] = []
    # A change is a fact about a service, kept under its own id; investigations look it up.
    deploy = ChangeRecorded(
        service="checkout",
        description="deploy v2.14.0",
        changed_at=t0 - timedelta(minutes=6),
        ref="v2.14.0",
    )
    story.append(
        new_event(
            deploy,
            incident_id=f"change-{incident}",
            source="api",
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{incident}/change"),
            occurred_at=t0 - timedelta(minutes=6),
        )
    )

    def add(data: object, minutes: float, source: str) -> Event:
        cause = story[-1] if len(story) > 1 else None
        event = new_event(
            data,  # type: ignore[arg-type]
            incident_id=incident,
            source=source,
            caused_by=cause,
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{incident}/{len(story)}"),
            occurred_at=t0 + timedelta(minutes=minutes),
        )
        story.append(event)
        return event

    labels = {"alertname": "CheckoutLatencyHigh", "service": "checkout", "severity": "critical"}
    add(
        AnomalyDetected(
            origin="alertmanager",
            name="CheckoutLatencyHigh",
            fingerprint="a1b2c3",
            starts_at=t0,
            labels=labels,
            service="checkout",
            severity="critical",
            value=2.4,
        ),
        0,
        "alertmanager",
    )
    add(InvestigationStarted(model="builtin"), 0.1, "responder")
    add(AgentStep(turn=0, kind="response", model="builtin"), 0.2, "responder")
    for i, (tool, ms) in enumerate(
        [("prometheus_range", 41.0), ("recent_changes", 7.5), ("related_alerts", 12.0)]
    ):
        add(ToolRequested(tool_call_id=f"call-{i}", tool_name=tool), 0.3, "responder")
        add(ToolCompleted(tool_call_id=f"call-{i}", tool_name=tool, duration_ms=ms), 0.4, "worker")
    add(
        RootCauseConcluded(
            summary="p99 rose 3 minutes after deploy v2.14.0",
            hypotheses=[
                Hypothesis(
                    cause="deploy v2.14.0 of checkout",
                    confidence=0.86,
                    evidence=["call-0", "call-1"],
                ),
                Hypothesis(cause="database saturation", confidence=0.09, evidence=["call-2"]),
            ],
        ),
        1,
        "responder",
    )
    steps = [
        RemediationAction(
            action="rollback_deployment",
            params={"service": "checkout", "to": "v2.13.2"},
            compensation="rollforward_deployment",
        )
    ]
    add(RemediationProposed(saga_id="saga-1", steps=steps, mode="auto"), 1.1, "responder")
    add(SagaStarted(saga_id="saga-1", steps=steps), 1.2, "saga")
    add(
        SagaStepStarted(
            saga_id="saga-1",
            step=0,
            action="rollback_deployment",
            params=steps[0].params,
            idempotency_key="saga-1/0",
        ),
        1.3,
        "saga",
    )
    add(SagaStepSucceeded(saga_id="saga-1", step=0, action="rollback_deployment"), 3, "saga")
    add(VerificationPassed(saga_id="saga-1", check="p99 < 0.5s", observed=0.31), 6, "saga")
    add(SagaCompleted(saga_id="saga-1"), 6.1, "saga")
    add(
        AnomalyResolved(
            origin="alertmanager",
            name="CheckoutLatencyHigh",
            fingerprint="a1b2c3",
            starts_at=t0,
            ends_at=t0 + timedelta(minutes=6),
            labels=labels,
        ),
        6.2,
        "alertmanager",
    )
    add(IncidentResolved(how="remediation", summary="rolled back to v2.13.2"), 6.3, "saga")
    return story
