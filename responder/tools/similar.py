"""`similar_incidents`: past incidents of the same alert or service, what was found to cause
them and how they ended, from the DuckDB read model.

A worker holds no DuckDB file: it asks the projector's SQL service over NATS on its
well-known subject (`eventlog.sql_service.request_read_model`). The query takes `*` and the
tool keeps the columns it knows that are there, so a read model with more columns (the root
cause's service and summary) is told without a change here. Values are bound as SQL string
literals with their quotes doubled (the SQL service takes one plain statement).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eventlog.sql_service import request_read_model
from responder.tools import Tool, ToolContext

NAME_PATTERN = r"^[^\x00-\x1f]*$"  # no control characters: they have no business in a name
SQL_TIMEOUT = 20.0
TOLD_COLUMNS = (
    "incident_id", "title", "service", "severity", "status", "opened_at", "resolved_at",
    "resolution", "root_cause", "root_cause_confidence", "root_cause_service",
    "root_cause_summary",
)  # fmt: skip


class SimilarArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(default=None, max_length=256, pattern=NAME_PATTERN)
    alert: str | None = Field(
        default=None, max_length=256, pattern=NAME_PATTERN, description="an alert name"
    )
    limit: int = Field(default=5, ge=1, le=20)

    @model_validator(mode="after")
    def _something_to_match(self) -> SimilarArgs:
        if self.service is None and self.alert is None:
            raise ValueError("give service or alert (or both): what makes an incident similar")
        return self


def literal(value: str) -> str:
    """A SQL string literal: quotes doubled (DuckDB reads backslashes as themselves)."""
    return "'" + value.replace("'", "''") + "'"


def similar_sql(incident_id: str, now: datetime, args: SimilarArgs) -> str:
    """Incidents other than `incident_id`, opened before `now`, of the service or with an
    anomaly of the alert's name; newest first, one more than asked (to tell there are more)."""
    same_service = f"i.service = {literal(args.service)}" if args.service else "false"
    same_alert = "false"
    if args.alert:
        name = literal(args.alert)
        same_alert = (
            f"(i.title = {name} OR i.incident_id IN (SELECT e.incident_id FROM events e "
            f"WHERE e.type = 'AnomalyDetected' AND e.data->>'name' = {name}))"
        )
    return (
        f"SELECT i.*, {same_service} AS same_service, {same_alert} AS same_alert "
        f"FROM incidents i WHERE i.incident_id <> {literal(incident_id)} "
        f"AND i.opened_at < {literal(now.isoformat())}::TIMESTAMPTZ "
        f"AND ({same_service} OR {same_alert}) "
        f"ORDER BY i.opened_at DESC LIMIT {args.limit + 1}"
    )


async def similar_incidents(ctx: ToolContext, args: SimilarArgs) -> dict[str, Any]:
    """At most `limit` past incidents like this one, newest first."""
    result = await request_read_model(
        ctx.nc, similar_sql(ctx.incident_id, ctx.now, args), timeout=SQL_TIMEOUT
    )
    rows = result.records()
    return {
        "incidents": [_told(row, ctx.now) for row in rows[: args.limit]],
        "more": len(rows) > args.limit,
    }


def _told(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    told = {key: row[key] for key in TOLD_COLUMNS if key in row}
    told["matched"] = [what for what in ("service", "alert") if row.get(f"same_{what}")]
    resolved = _time(row.get("resolved_at"))
    if resolved is not None and resolved > now:  # its end is later than the investigation
        told.update(status="open", resolved_at=None, resolution=None)
        resolved = None
    opened = _time(row.get("opened_at"))
    if resolved is not None and opened is not None:
        told["minutes_to_resolve"] = round((resolved - opened).total_seconds() / 60, 1)
    return told


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


SIMILAR_INCIDENTS = Tool(
    name="similar_incidents",
    description="Past incidents of the same service or alert name, newest first: their root "
    "cause, status and how they ended.",
    args=SimilarArgs,
    run=similar_incidents,
)
