"""Read models as pure folds: `fold_*(row, events) -> row`.

Each row is what the events of one incident say so far (an investigation's attempts and tool
calls are in eventlog/investigations.py, a remediation's sagas and steps in eventlog/sagas.py);
the projector loads the rows a batch touches, folds the batch's events into them and writes
them back in the batch's transaction.
No row holds anything the stream cannot rebuild.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson

from eventlog.envelope import Event
from eventlog.payloads import (
    AnomalyDetected,
    AnomalyPredicted,
    AnomalyResolved,
    AnomalyWithdrawn,
    ChangeRecorded,
    IncidentAcknowledged,
    IncidentResolved,
    InvestigationStarted,
    RootCauseConcluded,
    SagaCompensated,
    SagaStarted,
    ToolRequested,
)

SEVERITY_RANK = {"critical": 3, "error": 2, "warning": 1, "info": 0}
# Statuses only move forward, except that a new firing anomaly re-opens a resolved incident.
STATUS_RANK = {"open": 0, "investigating": 1, "diagnosed": 2, "remediating": 3, "resolved": 4}


@dataclass(frozen=True, slots=True)
class IncidentRow:
    incident_id: str
    status: str
    title: str | None
    service: str | None
    severity: str | None
    predicted: bool
    opened_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None
    root_cause: str | None = None
    root_cause_confidence: float | None = None
    firing: tuple[str, ...] = ()
    anomalies: int = 0
    tool_calls: int = 0
    event_count: int = 0
    last_event_at: datetime | None = None
    last_seq: int = 0
    # When each of `firing` began (same order); None where folded before Vigil kept it.
    firing_since: tuple[datetime | None, ...] | None = ()
    root_cause_service: str | None = None
    root_cause_summary: str | None = None
    root_cause_attempt: int | None = None  # None: none yet, or folded before Vigil kept it


def _advance(state: dict[str, Any], status: str) -> None:
    if STATUS_RANK[status] > STATUS_RANK[state["status"]]:
        state["status"] = status


def _worse(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if SEVERITY_RANK.get(a, -1) >= SEVERITY_RANK.get(b, -1) else b


def fold_incident(
    row: IncidentRow | None, events: Iterable[tuple[Event, int]]
) -> IncidentRow | None:
    """The incident after `events` (each with its stream sequence); `row` is what came before.

    The fold works on one mutable copy per call, not a new row per event: the projector
    folds a whole batch of one incident at once.
    """
    state: dict[str, Any] | None = None if row is None else row_state(row)
    for event, seq in events:
        if isinstance(event.data, ChangeRecorded):
            continue  # a fact about a service, not part of an incident's story
        if state is None and isinstance(event.data, AnomalyResolved | AnomalyWithdrawn):
            continue  # the end of something never seen firing opens no incident
        if state is None:
            state = _opened_by(event)
        _apply_incident(state, event, seq)
    return None if state is None else IncidentRow(**state)


def _opened_by(event: Event) -> dict[str, Any]:
    data = event.data
    first = IncidentRow(
        incident_id=event.incident_id,
        status="open",
        title=getattr(data, "name", None),
        service=getattr(data, "service", None),
        severity=getattr(data, "severity", None),
        predicted=isinstance(data, AnomalyPredicted),
        opened_at=event.occurred_at,
    )
    return row_state(first)


def _apply_incident(s: dict[str, Any], event: Event, seq: int) -> None:
    data = event.data
    s["event_count"] += 1
    last = s["last_event_at"]
    s["last_event_at"] = event.occurred_at if last is None else max(last, event.occurred_at)
    s["last_seq"] = seq
    if isinstance(data, AnomalyDetected | AnomalyPredicted):
        s["title"] = s["title"] or data.name
        s["service"] = s["service"] or data.service
        s["severity"] = _worse(s["severity"], data.severity)
        if not getattr(data, "returned", False):  # listed again after a silence: same anomaly
            s["anomalies"] += 1
    if isinstance(data, AnomalyDetected):
        _fires(s, data.fingerprint, data.starts_at)
    elif isinstance(data, AnomalyResolved | AnomalyWithdrawn):
        _ends(s, data.fingerprint, data.starts_at)
    elif isinstance(data, InvestigationStarted):
        _advance(s, "investigating")
    elif isinstance(data, ToolRequested):
        s["tool_calls"] += 1
    elif isinstance(data, RootCauseConcluded):
        _advance(s, "diagnosed")
        _diagnosed(s, data)
    elif isinstance(data, SagaStarted):
        _advance(s, "remediating")
    elif isinstance(data, SagaCompensated) and s["status"] == "remediating":
        s["status"] = "diagnosed"  # undone: as it was before, the root cause still known
    elif isinstance(data, IncidentAcknowledged) and s["acknowledged_at"] is None:
        s.update(acknowledged_at=event.occurred_at, acknowledged_by=data.by)
    elif isinstance(data, IncidentResolved):
        s.update(status="resolved", resolved_at=event.occurred_at, resolution=data.how)


def _diagnosed(s: dict[str, Any], data: RootCauseConcluded) -> None:
    """The root cause is the latest attempt's top hypothesis (ranked: the first); an earlier
    attempt's report told after it changes nothing."""
    held = s["root_cause_attempt"]
    if held is not None and data.attempt < held:
        return
    top = data.report.hypotheses[0]
    s.update(root_cause=top.category, root_cause_service=top.service,
             root_cause_confidence=top.confidence, root_cause_summary=data.report.summary,
             root_cause_attempt=data.attempt)  # fmt: skip


def _since(s: dict[str, Any]) -> list[datetime | None]:
    """When each firing fingerprint began (None: folded before Vigil kept it, so any end of
    the series ends it, as it always did)."""
    since = s["firing_since"]
    if since is None or len(since) != len(s["firing"]):
        return [None] * len(s["firing"])
    return list(since)


def _fires(s: dict[str, Any], fingerprint: str, starts_at: datetime) -> None:
    firing, since = list(s["firing"]), _since(s)
    if fingerprint in firing:  # the newest firing of a series is the one that counts
        i = firing.index(fingerprint)
        since[i] = max(since[i] or starts_at, starts_at)
    else:
        firing.append(fingerprint)
        since.append(starts_at)
        if s["status"] == "resolved":  # it fired again: the incident is open again
            s.update(status="open", resolved_at=None, resolution=None)
    s["firing"], s["firing_since"] = tuple(firing), tuple(since)


def _ends(s: dict[str, Any], fingerprint: str, starts_at: datetime) -> None:
    """The firing that began at `starts_at` ended: a newer one of the series goes on firing."""
    firing, since = list(s["firing"]), _since(s)
    if fingerprint not in firing:
        return
    i = firing.index(fingerprint)
    if since[i] is not None and since[i] > starts_at:
        return  # an older firing's end, told after the newer one began
    del firing[i], since[i]
    s["firing"], s["firing_since"] = tuple(firing), tuple(since)


def row_state(row: Any) -> dict[str, Any]:
    """A row's fields as a dict to fold into (attrgetter: far cheaper than dataclasses.replace)."""
    names = _FIELD_NAMES.get(type(row))
    if names is None:
        names = _FIELD_NAMES[type(row)] = tuple(f.name for f in fields(row))
    return dict(zip(names, operator.attrgetter(*names)(row), strict=True))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def as_json(value: Any) -> str:
    return orjson.dumps(value).decode()
