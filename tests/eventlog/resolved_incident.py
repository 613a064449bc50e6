"""Test data: every kind of event one incident can have, an alert, an investigation, a
remediation saga and the resolution, consistent with each other, for the read-model tests
(no role appends remediation events yet, so no pipeline can make them)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pydantic_ai.messages import (
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RequestUsage

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
from eventlog.payloads.investigation import RootCauseReport, RuledOut


class _Timeline:
    """Events of one incident, each caused by the one before, with ids derived from the story
    (so telling it twice appends nothing new)."""

    def __init__(self, t0: datetime) -> None:
        self.t0 = t0
        self.incident = "sample-" + hashlib.sha256(t0.isoformat().encode()).hexdigest()[:12]
        self.events: list[Event] = []

    def at(self, minutes: float) -> datetime:
        return self.t0 + timedelta(minutes=minutes)

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
                occurred_at=self.at(minutes),
            )
        )


def resolved_incident(started: datetime | None = None) -> list[Event]:
    """The checkout service's p99 latency breaches after a deploy; rollback fixes it."""
    tl = _Timeline(started or datetime.now(UTC).replace(microsecond=0))
    _the_alert(tl)
    _the_investigation(tl)
    _the_remediation(tl)
    return tl.events


LABELS = {"alertname": "CheckoutLatencyHigh", "service": "checkout", "severity": "critical"}


def _the_alert(tl: _Timeline) -> None:
    # A change is a fact about a service, kept under its own id; investigations look it up.
    deploy = ChangeRecorded(service="checkout", description="deploy v2.14.0",
                            changed_at=tl.t0 - timedelta(minutes=6), ref="v2.14.0")  # fmt: skip
    tl.add(deploy, -6, "api", incident=f"change-{tl.incident}")
    tl.add(
        AnomalyDetected(origin="alertmanager", name="CheckoutLatencyHigh", fingerprint="a1b2c3",
                        starts_at=tl.t0, labels=LABELS, service="checkout",
                        severity="critical", value=2.4),
        0, "alertmanager",
    )  # fmt: skip


MODEL = "builtin"
SYSTEM_PROMPT = (
    "You investigate incidents. Ask for the tools you need, then answer with a report whose "
    "hypotheses are ranked and cite the tool calls that are their evidence."
)
P99 = ('histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket'
       '{service="checkout"}[5m])))')  # fmt: skip
RATE = 'sum(rate(http_requests_total{service="checkout"}[5m]))'


def _the_investigation(tl: _Timeline) -> None:
    """Two model requests: the first asks for three tools, the second reads their results
    and answers with the report (pydantic-ai's output tool, `final_result`)."""
    now, onset = tl.at(0.1), tl.t0 - timedelta(minutes=3)  # p99 rose before the alert
    started = InvestigationStarted(model=MODEL, now=now, onset=onset)
    tl.add(started, 0.1, "responder")
    calls = _tool_calls(tl, now, onset)
    asked = [ToolCallPart(c.tool, c.args, tool_call_id=c.id) for c in calls]
    prompt = UserPromptPart(f"CheckoutLatencyHigh fired at {tl.t0.isoformat()} on checkout "
                            "(p99 2.4 s). Find the root cause.", timestamp=now)  # fmt: skip
    first = _step(tl, 0, [SystemPromptPart(SYSTEM_PROMPT, timestamp=now), prompt], asked,
                  RequestUsage(input_tokens=1420, output_tokens=186), 0.2)  # fmt: skip
    tl.add(first, 0.2, "responder")
    for c in calls:
        requested = ToolRequested(tool_call_id=c.id, tool_name=c.tool, args=c.args, attempt=1,
                                  turn=0, now=now, onset=onset)  # fmt: skip
        tl.add(requested, 0.25, "responder")
    for c in calls:
        done = ToolCompleted(tool_call_id=c.id, tool_name=c.tool, result=c.result, duration_ms=c.ms)
        tl.add(done, 0.3, "worker")
    returned = [ToolReturnPart(c.tool, c.result, tool_call_id=c.id, timestamp=tl.at(0.3))
                for c in calls]  # fmt: skip
    report = _report()
    answer = [ToolCallPart("final_result", report.model_dump(mode="json"), tool_call_id="final")]
    second = _step(tl, 1, returned, answer, RequestUsage(input_tokens=2954, output_tokens=412),
                   0.9)  # fmt: skip
    tl.add(second, 0.9, "responder")
    usage = (first.input_tokens + second.input_tokens, first.output_tokens + second.output_tokens)
    concluded = RootCauseConcluded(attempt=1, model=MODEL, report=report, model_requests=2,
                                   tool_calls=len(calls), input_tokens=usage[0],
                                   output_tokens=usage[1])  # fmt: skip
    tl.add(concluded, 1, "responder")


class _Call(NamedTuple):
    """A tool call of the incident and the worker's answer to it."""

    id: str
    tool: str
    args: dict[str, Any]
    result: dict[str, Any]
    ms: float


def _tool_calls(tl: _Timeline, now: datetime, onset: datetime) -> list[_Call]:
    """What the model asks for first, answered as `prometheus_range` and `recent_changes`
    answer."""
    window = {"from": (onset - timedelta(minutes=30)).isoformat(), "onset": onset.isoformat(),
              "to": now.isoformat(), "total_series": 1}  # fmt: skip
    p99 = {**window, "series": [{"labels": {"service": "checkout"},
           "before": {"n": 60, "mean": 0.212, "min": 0.181, "max": 0.263, "last": 0.205},
           "after": {"n": 7, "mean": 2.31, "min": 1.94, "max": 2.61, "last": 2.4},
           "change": 9.8962}]}  # fmt: skip
    rate = {**window, "series": [{"labels": {"service": "checkout"},
            "before": {"n": 60, "mean": 412.3, "min": 371.0, "max": 455.8, "last": 409.1},
            "after": {"n": 7, "mean": 405.2, "min": 388.4, "max": 421.7, "last": 402.6},
            "change": -0.0172}]}  # fmt: skip
    deployed = tl.t0 - timedelta(minutes=6)
    changes = {"changes": [{"service": "checkout", "kind": "deploy",
               "description": "deploy v2.14.0", "at": deployed.isoformat(),
               "minutes_before_now": round((now - deployed).total_seconds() / 60, 1),
               "ref": "v2.14.0"}], "total": 1}  # fmt: skip
    ranged = {"onset": onset.isoformat(), "before_minutes": 30, "step_seconds": 30}
    return [
        _Call("call-0", "prometheus_range", {"query": P99, **ranged}, p99, 41.0),
        _Call("call-1", "recent_changes", {"service": "checkout", "hours": 2}, changes, 7.5),
        _Call("call-2", "prometheus_range", {"query": RATE, **ranged}, rate, 38.0),
    ]


def _report() -> RootCauseReport:
    deploy = Hypothesis(category="deploy_or_config_change", service="checkout", confidence=0.86,
                        explanation="p99 went from 0.21 s to 2.31 s (means before and after the "
                        "onset) 3 minutes after deploy v2.14.0 of checkout; traffic was flat",
                        evidence=["call-0", "call-1", "call-2"])  # fmt: skip
    saturation = Hypothesis(category="resource_saturation", service="checkout", confidence=0.09,
                            explanation="latency this high can come from saturation; checkout's "
                            "CPU and memory were not looked at", evidence=["call-0"])  # fmt: skip
    surge = RuledOut(what="a traffic surge", category="traffic_surge", service="checkout",
                     reason="412 requests/s before the onset, 405 after",
                     evidence=["call-2"])  # fmt: skip
    return RootCauseReport(
        summary="deploy v2.14.0 of checkout raised its p99 latency from 0.21 s to 2.3 s",
        hypotheses=[deploy, saturation],
        ruled_out=[surge],
        gaps=["checkout's CPU and memory were not queried"],
    )


def _step(
    tl: _Timeline,
    step: int,
    sent: list[ModelRequestPart],
    answered: list[ModelResponsePart],
    usage: RequestUsage,
    minutes: float,
) -> AgentStep:
    """One model request and its response, as pydantic-ai serialises them."""
    at = tl.at(minutes)
    request = ModelRequest(parts=sent, timestamp=at - timedelta(seconds=3))
    response = ModelResponse(parts=answered, usage=usage, model_name=MODEL, timestamp=at)
    request_json, response_json = ModelMessagesTypeAdapter.dump_python(
        [request, response], mode="json"
    )
    return AgentStep(attempt=1, step=step, turn=step, model=MODEL, request=request_json,
                     response=response_json, input_tokens=usage.input_tokens,
                     output_tokens=usage.output_tokens, duration_ms=3000.0)  # fmt: skip


def _the_remediation(tl: _Timeline) -> None:
    saga = "saga-1"
    rollback = RemediationAction(action="rollback_deployment",
                                 params={"service": "checkout", "to": "v2.13.2"},
                                 compensation="rollforward_deployment")  # fmt: skip
    tl.add(RemediationProposed(saga_id=saga, steps=[rollback], mode="auto"), 1.1, "responder")
    tl.add(SagaStarted(saga_id=saga, steps=[rollback]), 1.2, "saga")
    started = SagaStepStarted(saga_id=saga, step=0, action=rollback.action,
                              params=rollback.params, idempotency_key=f"{saga}/0")  # fmt: skip
    tl.add(started, 1.3, "saga")
    tl.add(SagaStepSucceeded(saga_id=saga, step=0, action=rollback.action), 3, "saga")
    tl.add(VerificationPassed(saga_id=saga, check="p99 < 0.5s", observed=0.31), 6, "saga")
    tl.add(SagaCompleted(saga_id=saga), 6.1, "saga")
    resolved = AnomalyResolved(origin="alertmanager", name="CheckoutLatencyHigh",
                               fingerprint="a1b2c3", starts_at=tl.t0,
                               ends_at=tl.t0 + timedelta(minutes=6), labels=LABELS)  # fmt: skip
    tl.add(resolved, 6.2, "alertmanager")
    summary = "rolled back to v2.13.2"
    tl.add(IncidentResolved(how="remediation", summary=summary), 6.3, "saga")
