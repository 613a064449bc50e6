"""`prometheus_query` and `prometheus_range`: PromQL at, and up to, the investigation's time.

Results are summarised for a model, never raw samples: an instant query gives the top series
by value; a range query gives each series' statistics before and after the onset, and the
series that moved most. Prometheus's HTTP API (`/api/v1/query`, `/api/v1/query_range`)
through httpx; a query error is the tool's failure, with Prometheus's own message.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from responder.tools import Tool, ToolContext
from responder.tools.series import around, auto_step, points_of, sample_value, since

TOP_SERIES = 10
MAX_POINTS = 1000
HTTP_TIMEOUT = 20.0


class PrometheusFailed(RuntimeError):
    """Prometheus is not configured, not reachable, or refused the query (its message)."""


class QueryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000, description="PromQL")


class RangeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000, description="PromQL")
    onset: AwareDatetime | None = Field(
        default=None, description="when it began; default: the anomaly's onset, else now"
    )
    before_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    step_seconds: float | None = Field(
        default=None, ge=1, le=3600, description="default: ten points after the onset"
    )


async def prometheus_api(ctx: ToolContext, path: str, params: dict[str, str]) -> Any:
    """GET one of Prometheus's API paths: its `data`, or PrometheusFailed saying why not."""
    url = ctx.settings.prometheus_url
    if not url:
        raise PrometheusFailed("no Prometheus configured (VIGIL_PROMETHEUS_URL)")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as c:
            answer = await c.get(path, params=params)
    except httpx.HTTPError as exc:
        raise PrometheusFailed(f"Prometheus unreachable: {type(exc).__name__}: {exc}") from None
    try:
        body = answer.json()
    except ValueError:
        raise PrometheusFailed(f"Prometheus answered {answer.status_code}, not JSON") from None
    if body.get("status") != "success":
        raise PrometheusFailed(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    return body["data"]


async def prometheus_query(ctx: ToolContext, args: QueryArgs) -> dict[str, Any]:
    """The query at `now`: the TOP_SERIES series by value, and how many there were."""
    data = await prometheus_api(
        ctx, "/api/v1/query", {"query": args.query, "time": timestamp(ctx.now)}
    )
    if data["resultType"] == "scalar":
        return {"at": ctx.now.isoformat(), "scalar": sample_value(data["result"][1])}
    series = [(s["metric"], sample_value(s["value"][1])) for s in data["result"]]
    series.sort(key=lambda s: -math.inf if s[1] is None else s[1], reverse=True)
    return {
        "at": ctx.now.isoformat(),
        "series": [{"labels": labels, "value": v} for labels, v in series[:TOP_SERIES]],
        "total_series": len(series),
    }


async def prometheus_range(ctx: ToolContext, args: RangeArgs) -> dict[str, Any]:
    """Per series, statistics before the onset and from it up to `now` (the onset is the
    anomaly's by default, else `now`: then "after" is empty), and `since`: when its latest
    unbroken run of values began (for an alert rule's condition, when it began to hold:
    Prometheus's "active at"); the TOP_SERIES that changed most, by relative change of their
    means."""
    onset = min(args.onset or ctx.onset or ctx.now, ctx.now)
    start = onset - timedelta(minutes=args.before_minutes)
    step = args.step_seconds or auto_step(start, onset, ctx.now, MAX_POINTS)
    data = await query_range(ctx, args.query, start, step)
    summaries = [_summary(s["metric"], points_of(s["values"]), onset, step)
                 for s in data["result"]]  # fmt: skip
    summaries.sort(key=lambda s: abs(s["change"]) if s["change"] is not None else -1, reverse=True)
    return {
        "from": start.isoformat(), "onset": onset.isoformat(), "to": ctx.now.isoformat(),
        "step_seconds": step, "series": summaries[:TOP_SERIES], "total_series": len(summaries),
    }  # fmt: skip


def _summary(
    labels: dict[str, str], points: list[tuple[float, float]], onset: datetime, step: float
) -> dict[str, Any]:
    began = since(points, step)
    at = None if began is None else datetime.fromtimestamp(began, UTC).isoformat()
    return {"labels": labels, **around(points, onset), "since": at}


async def query_range(
    ctx: ToolContext, query: str, start: datetime, step_seconds: float
) -> dict[str, Any]:
    """`query` from `start` up to `now`, never past it."""
    # The step in plain seconds: Prometheus takes 1.8 but not "1.8s" (a duration is whole).
    params = {"query": query, "start": timestamp(start), "end": timestamp(ctx.now),
              "step": f"{step_seconds:g}"}  # fmt: skip
    data: dict[str, Any] = await prometheus_api(ctx, "/api/v1/query_range", params)
    return data


def timestamp(at: datetime) -> str:
    """A time as Prometheus's API takes it: unix seconds."""
    return f"{at.timestamp():.3f}"


PROMETHEUS_QUERY = Tool(
    name="prometheus_query",
    description="A PromQL instant query at the investigation's time: the top series by value.",
    args=QueryArgs,
    run=prometheus_query,
)
PROMETHEUS_RANGE = Tool(
    name="prometheus_range",
    description="A PromQL range query around the onset: each series' statistics before and "
    "after it, the series that changed most first.",
    args=RangeArgs,
    run=prometheus_range,
)
