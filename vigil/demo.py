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
    Payload,
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


class _Story:
    """Events of one incident, each caused by the one before, with ids derived from the story
    (so telling it twice appends nothing new)."""

    def __init__(self, t0: datetime) -> None:
        self.t0 = t0
        self.incident = "demo-" + hashlib.sha256(t0.isoformat().encode()).hexdigest()[:12]
        self.events: list[Event] = []

    def add(self, data: Payload, minutes: float, source: str, *, incident: str = "") -> None:
        own = not incident
        cause = next((e for e in reversed(self.events) if e.incident_id == self.incident), None)
        self.events.append(
            new_event(
                data,
                incident_id=incident or self.incident,
                source=source,
                caused_by=cause if own else None,
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{self.incident}/{len(self.events)}"),
                occurred_at=self.t0 + timedelta(minutes=minutes),
            )
        )


def demo_incident(started: datetime | None = None) -> list[Event]:
    """The checkout service's p99 latency breaches after a deploy; rollback fixes it."""
    story = _Story(started or datetime.now(UTC).replace(microsecond=0))
    _the_alert(story)
    _the_investigation(story)
    _the_remediation(story)
    return story.events


LABELS = {"alertname": "CheckoutLatencyHigh", "service": "checkout", "severity": "critical"}


def _the_alert(story: _Story) -> None:
    # A change is a fact about a service, kept under its own id; investigations look it up.
    deploy = ChangeRecorded(service="checkout", description="deploy v2.14.0",
                            changed_at=story.t0 - timedelta(minutes=6), ref="v2.14.0")  # fmt: skip
    story.add(deploy, -6, "api", incident=f"change-{story.incident}")
    story.add(
        AnomalyDetected(origin="alertmanager", name="CheckoutLatencyHigh", fingerprint="a1b2c3",
                        starts_at=story.t0, labels=LABELS, service="checkout",
                        severity="critical", value=2.4),
        0, "alertmanager",
    )  # fmt: skip


def _the_investigation(story: _Story) -> None:
    story.add(InvestigationStarted(model="builtin"), 0.1, "responder")
    story.add(AgentStep(turn=0, kind="response", model="builtin"), 0.2, "responder")
    tools = [("prometheus_range", 41.0), ("recent_changes", 7.5), ("related_alerts", 12.0)]
    for i, (tool, ms) in enumerate(tools):
        story.add(ToolRequested(tool_call_id=f"call-{i}", tool_name=tool), 0.3, "responder")
        done = ToolCompleted(tool_call_id=f"call-{i}", tool_name=tool, duration_ms=ms)
        story.add(done, 0.4, "worker")
    deploy = Hypothesis(cause="deploy v2.14.0 of checkout", confidence=0.86,
                        evidence=["call-0", "call-1"])  # fmt: skip
    database = Hypothesis(cause="database saturation", confidence=0.09, evidence=["call-2"])
    summary = "p99 rose 3 minutes after deploy v2.14.0"
    story.add(RootCauseConcluded(summary=summary, hypotheses=[deploy, database]), 1, "responder")


def _the_remediation(story: _Story) -> None:
    saga = "saga-1"
    rollback = RemediationAction(action="rollback_deployment",
                                 params={"service": "checkout", "to": "v2.13.2"},
                                 compensation="rollforward_deployment")  # fmt: skip
    story.add(RemediationProposed(saga_id=saga, steps=[rollback], mode="auto"), 1.1, "responder")
    story.add(SagaStarted(saga_id=saga, steps=[rollback]), 1.2, "saga")
    started = SagaStepStarted(saga_id=saga, step=0, action=rollback.action,
                              params=rollback.params, idempotency_key=f"{saga}/0")  # fmt: skip
    story.add(started, 1.3, "saga")
    story.add(SagaStepSucceeded(saga_id=saga, step=0, action=rollback.action), 3, "saga")
    story.add(VerificationPassed(saga_id=saga, check="p99 < 0.5s", observed=0.31), 6, "saga")
    story.add(SagaCompleted(saga_id=saga), 6.1, "saga")
    resolved = AnomalyResolved(origin="alertmanager", name="CheckoutLatencyHigh",
                               fingerprint="a1b2c3", starts_at=story.t0,
                               ends_at=story.t0 + timedelta(minutes=6), labels=LABELS)  # fmt: skip
    story.add(resolved, 6.2, "alertmanager")
    summary = "rolled back to v2.13.2"
    story.add(IncidentResolved(how="remediation", summary=summary), 6.3, "saga")
