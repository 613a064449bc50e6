"""The JSON shapes of /api/v1's queries (pydantic v2): what the page, the CLI and pipelines
read. Timestamps are ISO 8601 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict

from eventlog.history import StoredEvent
from eventlog.payloads.investigation import RootCauseReport


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]


class Whoami(BaseModel):
    name: str
    scope: Literal["read", "operate"]


class Incident(BaseModel):
    """One row of the read model's `incidents` (it lags the stream by the projector's delay);
    `root_cause*` are the latest report's top hypothesis."""

    incident_id: str
    status: str  # open|investigating|diagnosed|remediating|resolved
    title: str | None
    service: str | None
    severity: str | None
    opened_at: UtcTime
    acknowledged_at: UtcTime | None
    acknowledged_by: str | None
    resolved_at: UtcTime | None
    resolution: str | None
    root_cause: str | None  # the latest report's top category
    root_cause_service: str | None
    root_cause_summary: str | None
    root_cause_confidence: float | None  # 0..1
    last_event_at: UtcTime
    event_count: int


class IncidentPage(BaseModel):
    incidents: list[Incident]
    next_cursor: str | None  # pass as `cursor` for the next (older) page; null: the last page


class TimelineEvent(BaseModel):
    """An event's envelope as JSON, plus `seq`: its stream sequence (the SSE id)."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    incident_id: str
    occurred_at: str
    source: str
    causation_id: str | None
    correlation_id: str | None
    schema_version: int
    data: dict[str, Any]
    seq: int

    @classmethod
    def of(cls, stored: StoredEvent) -> TimelineEvent:
        return cls.model_validate(timeline_json(stored))


def timeline_json(stored: StoredEvent) -> dict[str, Any]:
    """The envelope as JSON (as it travels) with its stream sequence."""
    return orjson.loads(stored.event.to_json()) | {"seq": stored.seq}


class Timeline(BaseModel):
    events: list[TimelineEvent]


class SagaStep(BaseModel):
    step: int  # from 0, in plan order
    action: str
    params: dict[str, Any]
    status: str  # pending, or a saga_steps status (started, succeeded, failed, compensated, ...)


class Saga(BaseModel):
    saga_id: str
    status: str  # proposed|awaiting_approval|approved|running|verifying|compensating|...
    mode: str | None  # auto|approval|dry_run (None: refused at proposal)
    risk: str | None  # low|medium|high
    proposed_by: str | None
    rationale: str | None
    steps: list[SagaStep]
    expires_at: UtcTime | None  # when an unanswered approval expires; null once decided


class IncidentDetail(BaseModel):
    incident: Incident | None  # null until the projector has folded its first event
    report: RootCauseReport | None  # the latest RootCauseConcluded's
    report_attempt: int | None
    sagas: list[Saga]
    awaiting_approval: list[str]  # saga ids a decision can still be given for
    last_seq: int  # the stream sequence of its last event: `after` for its stream
