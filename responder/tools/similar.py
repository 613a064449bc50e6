"""`similar_incidents`: past incidents of the same alert or service, what was found to cause
them, how they ended and which remediations were tried on them and with what outcome, from the
DuckDB read model.

A worker holds no DuckDB file: it asks the projector's SQL service over NATS on its
well-known subject (`eventlog.sql_service.request_read_model`). The query takes `*` and the
tool keeps the columns it knows that are there, so a read model with more columns (the root
cause's service and summary) is told without a change here. Values are bound as SQL string
literals with their quotes doubled (the SQL service takes one plain statement).

The remediations come from a second query, of the `remediations` view. A read model served by
a Vigil older than that view tells incidents without them: the key is left out (unknown), not
given empty (nothing tried).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eventlog.sql import SqlError
from eventlog.sql_service import request_read_model
from responder.tools import Tool, ToolContext

NAME_PATTERN = r"^[^\x00-\x1f]*$"  # no control characters: they have no business in a name
SQL_TIMEOUT = 20.0
TOLD_COLUMNS = (
    "incident_id", "title", "service", "severity", "status", "opened_at", "resolved_at",
    "resolution", "root_cause", "root_cause_confidence", "root_cause_service",
    "root_cause_summary",
)  # fmt: skip
NO_REMEDIATIONS_VIEW = "remediations does not exist"  # DuckDB's word for a missing view


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


def remediations_sql(incident_ids: list[str], now: datetime) -> str:
    """The remediations of these incidents proposed (or refused) before `now`, oldest first."""
    ids = ", ".join(literal(i) for i in incident_ids)
    began = "coalesce(proposed_at, started_at, ended_at)"
    return (
        "SELECT incident_id, saga_id, actions, services, outcome, reason, verified_by, "
        f"observed, started_at, ended_at, seconds FROM remediations "
        f"WHERE incident_id IN ({ids}) AND {began} < {literal(now.isoformat())}::TIMESTAMPTZ "
        f"ORDER BY {began}, saga_id"
    )


async def similar_incidents(ctx: ToolContext, args: SimilarArgs) -> dict[str, Any]:
    """At most `limit` past incidents like this one, newest first:
    `{"incidents": [{"incident_id", "title", ..., "matched": ["service", "alert"],
    "remediations": [{"saga_id", "actions", "services", "outcome", "reason", "verified_by",
    "observed", "minutes"}]}], "more": bool}` (`outcome` as the `remediations` view tells it,
    as of `now`)."""
    result = await request_read_model(
        ctx.nc, similar_sql(ctx.incident_id, ctx.now, args), timeout=SQL_TIMEOUT
    )
    rows = result.records()
    incidents = [_told(row, ctx.now) for row in rows[: args.limit]]
    if incidents:
        tried = await _remediations(ctx, [i["incident_id"] for i in incidents])
        if tried is not None:
            for incident in incidents:
                incident["remediations"] = tried.get(incident["incident_id"], [])
    return {"incidents": incidents, "more": len(rows) > args.limit}


async def _remediations(
    ctx: ToolContext, incident_ids: list[str]
) -> dict[str, list[dict[str, Any]]] | None:
    """Each incident's remediations, oldest first; None: the read model has none to tell."""
    try:
        result = await request_read_model(
            ctx.nc, remediations_sql(incident_ids, ctx.now), timeout=SQL_TIMEOUT
        )
    except SqlError as exc:
        if NO_REMEDIATIONS_VIEW in str(exc):
            return None
        raise
    tried: dict[str, list[dict[str, Any]]] = {}
    for row in result.records():
        tried.setdefault(row["incident_id"], []).append(_remediation(row, ctx.now))
    return tried


def _remediation(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """One remediation as of `now`: one whose end is later is still in progress then."""
    told = {key: row[key] for key in ("saga_id", "actions", "services", "outcome", "reason",
                                      "verified_by", "observed")}  # fmt: skip
    seconds = row["seconds"]
    told["minutes"] = None if seconds is None else round(seconds / 60, 1)
    ended = _time(row["ended_at"])
    if ended is not None and ended > now:
        told.update(outcome="in_progress", reason=None, verified_by=None, observed=None,
                    minutes=None)  # fmt: skip
    return told


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
    "cause, status, how they ended, and each remediation tried (its actions and outcome: "
    "worked, compensated, escalated, rejected, ...).",
    args=SimilarArgs,
    run=similar_incidents,
)
