"""Read models of an investigation, as pure folds: one row per attempt, one per tool call.

An attempt's events may come in any order, or without its `InvestigationStarted`: the row is
made by the first event of the attempt and each event fills in what it knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventlog.envelope import Event
from eventlog.payloads import (
    AgentStep,
    InvestigationStarted,
    RootCauseConcluded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.readmodels import as_json, row_state


@dataclass(frozen=True, slots=True)
class InvestigationRow:
    incident_id: str
    attempt: int
    model: str | None = None
    reason: str | None = None
    requested_by: str | None = None
    status: str = "running"  # running | concluded | partial
    started_at: datetime | None = None
    concluded_at: datetime | None = None
    duration_ms: float | None = None
    model_requests: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    top_category: str | None = None
    top_service: str | None = None
    top_confidence: float | None = None
    partial: bool = False
    partial_reason: str | None = None
    summary: str | None = None


INVESTIGATION_EVENTS = (InvestigationStarted, AgentStep, ToolRequested, RootCauseConcluded)


def fold_investigation(row: InvestigationRow | None, events: Sequence[Event]) -> InvestigationRow:
    """An attempt after `events` (all of it, one incident and attempt)."""
    if row is None:
        first = events[0].data
        assert isinstance(first, INVESTIGATION_EVENTS)
        row = InvestigationRow(events[0].incident_id, first.attempt)
    state = row_state(row)
    for event in events:
        _apply_attempt(state, event)
    return InvestigationRow(**state)


def _apply_attempt(s: dict[str, Any], event: Event) -> None:
    # The conclusion's account of the attempt closes it: a step told after it is not added.
    running = s["status"] == "running"
    match event.data:
        case InvestigationStarted() as started:
            at = event.occurred_at
            first = at if s["started_at"] is None else min(s["started_at"], at)
            s.update(model=started.model, reason=started.reason,
                     requested_by=started.requested_by, started_at=first)  # fmt: skip
        case AgentStep() as step:
            s["model"] = s["model"] or step.model
            if running:
                s["model_requests"] += 1
                s["input_tokens"] += step.input_tokens
                s["output_tokens"] += step.output_tokens
                if step.cost is not None:
                    s["cost"] = (s["cost"] or 0.0) + step.cost
        case ToolRequested():
            if running:
                s["tool_calls"] += 1
        case RootCauseConcluded() as concluded:
            _concluded(s, concluded, event.occurred_at)
    if s["started_at"] is not None and s["concluded_at"] is not None:
        s["duration_ms"] = (s["concluded_at"] - s["started_at"]).total_seconds() * 1000


def _concluded(s: dict[str, Any], data: RootCauseConcluded, at: datetime) -> None:
    """The report, and what the attempt took: the conclusion's totals where it carries them
    (a zero or a missing cost carries nothing), else what the steps told."""
    top = data.report.hypotheses[0]  # ranked: the first is the most likely
    partial = data.report.partial or data.partial_reason is not None
    s.update(
        status="partial" if partial else "concluded",
        concluded_at=at,
        model=s["model"] or data.model or None,
        model_requests=data.model_requests or s["model_requests"],
        tool_calls=data.tool_calls or s["tool_calls"],
        input_tokens=data.input_tokens or s["input_tokens"],
        output_tokens=data.output_tokens or s["output_tokens"],
        cost=s["cost"] if data.cost is None else data.cost,
        top_category=top.category,
        top_service=top.service,
        top_confidence=top.confidence,
        partial=partial,
        partial_reason=data.partial_reason,
        summary=data.report.summary,
    )


@dataclass(frozen=True, slots=True)
class ToolCallRow:
    incident_id: str
    tool_call_id: str
    tool_name: str
    status: str  # requested | completed | failed
    args: str | None = None
    turn: int | None = None
    requested_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    timed_out: bool = False
    error: str | None = None
    result: str | None = None
    attempt: int | None = None
    reused_from: str | None = None


TOOL_EVENTS = (ToolRequested, ToolCompleted, ToolFailed)
NO_OUTCOME = {"status": "requested", "finished_at": None, "duration_ms": None,
              "timed_out": False, "error": None, "result": None, "reused_from": None}  # fmt: skip


def fold_tool_call(row: ToolCallRow | None, events: Sequence[Event]) -> ToolCallRow:
    """A tool call after `events` (all about it)."""
    if row is None:
        first = events[0].data
        assert isinstance(first, TOOL_EVENTS)
        row = ToolCallRow(events[0].incident_id, first.tool_call_id, first.tool_name, "requested")
    state = row_state(row)
    for event in events:
        _apply_tool_call(state, event)
    return ToolCallRow(**state)


def _apply_tool_call(s: dict[str, Any], event: Event) -> None:
    at = event.occurred_at
    match event.data:
        case ToolRequested() as asked:
            if s["requested_at"] is not None:
                s.update(NO_OUTCOME)  # models number calls per turn: the id names a new call
            s.update(tool_name=asked.tool_name, args=as_json(asked.args), turn=asked.turn,
                     attempt=asked.attempt, requested_at=at)  # fmt: skip
        case ToolCompleted() as done:
            # After a timeout the result still came: completed, and `timed_out` and `error`
            # stay, since what the model was told was the failure.
            s.update(status="completed", finished_at=at, duration_ms=done.duration_ms,
                     result=as_json(done.result), reused_from=done.reused_from,
                     attempt=s["attempt"] or done.attempt)  # fmt: skip
        case ToolFailed() as failed if s["status"] == "completed":
            # Given up on just as the result came: the result stands, the failure is told too.
            s.update(timed_out=s["timed_out"] or failed.timed_out, error=failed.error)
        case ToolFailed() as failed:
            s.update(status="failed", finished_at=at, duration_ms=failed.duration_ms,
                     timed_out=failed.timed_out, error=failed.error,
                     reused_from=failed.reused_from,
                     attempt=s["attempt"] or failed.attempt)  # fmt: skip
