"""POST /api/v1/sql, /healthz, /readyz and the read model's figures on /metrics.

The API process does not hold the DuckDB file: SQL and the figures of the read model are asked
of the projector over NATS (`request_read_model`). /metrics stays fast whatever answers: the
figures are gathered into a snapshot just before each scrape, each source bounded by
SCRAPE_TIMEOUT, and a source that did not answer is left out (its `vigil_scrape_source_up` is
0) rather than served stale or waited for.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Reader
from api.context import ApiContext, Context
from api.ops_metrics import OpsCollector, OpsSnapshot
from api.problems import problem
from eventlog.sql import SqlError
from eventlog.sql_service import SqlUnanswered, request_read_model
from eventlog.stream import EVENTS_STREAM

READY_TIMEOUT = 2.0  # seconds each readiness check may take
SQL_GRACE = 5.0  # the API waits this much longer than the projector lets a query run
MAX_QUERY = 20_000  # characters


class SqlBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no "5" for 5: see commands.py

    query: str = Field(min_length=1, max_length=MAX_QUERY, description="one read statement")
    max_rows: int | None = Field(
        default=None, ge=1, description="at most VIGIL_SQL_MAX_ROWS (the default)"
    )


class SqlAnswer(BaseModel):
    """Columns, rows (JSON values: times as ISO 8601), and whether rows were left out."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """Each part, and what is not ready (`detail`: "ready" when everything is)."""

    nats: bool
    stream: bool
    read_model: bool
    detail: str


router = APIRouter()
AUTH = {
    401: problem("no bearer token, or one not configured"),
    403: problem("a remote client and no tokens configured"),
}


@router.post(
    "/api/v1/sql",
    tags=["sql"],
    responses=AUTH
    | {
        400: problem("the query was refused or failed; the reason"),
        503: problem("no projector answered (none running, or none within the time)"),
    },
)
async def sql(body: SqlBody, principal: Reader, context: Context) -> SqlAnswer:
    """Run one read-only statement on the read model (the projector's DuckDB): at most
    `max_rows` rows (capped by VIGIL_SQL_MAX_ROWS) within VIGIL_SQL_TIMEOUT_SECONDS. A write, a
    second statement, a file or URL read, a syntax error or a timeout is a 400 with the
    reason."""
    rows = min(body.max_rows or context.sql_max_rows, context.sql_max_rows)
    try:
        result = await request_read_model(
            context.nc, body.query, max_rows=rows, timeout=context.sql_timeout + SQL_GRACE
        )
    except SqlUnanswered as exc:
        raise HTTPException(503, str(exc)) from None
    except SqlError as exc:
        raise HTTPException(400, str(exc)) from None
    return SqlAnswer(columns=result.columns, rows=result.rows, truncated=result.truncated)


@router.get("/healthz", tags=["ops"])
async def healthz() -> Health:
    """The process lives and serves HTTP (nothing else is checked: see /readyz)."""
    return Health(status="ok")


@router.get(
    "/readyz", tags=["ops"], responses={503: {"model": Readiness, "description": "not ready"}}
)
async def readyz(context: Context) -> Any:
    """Ready to serve: NATS connected, the events stream present, the read model answering
    `SELECT 1` (each within 2 s). 503 with the same shape, `detail` naming what is not."""
    readiness = await check_readiness(context)
    status = 200 if readiness.nats and readiness.stream and readiness.read_model else 503
    return JSONResponse(readiness.model_dump(), status_code=status)


async def check_readiness(context: ApiContext) -> Readiness:
    nats = context.nc.is_connected
    stream, read_model = await asyncio.gather(_stream_ready(context), _read_model_ready(context))
    missing = [
        what for ok, what in (
            (nats, "NATS is not connected"),
            (stream is None, f"stream {EVENTS_STREAM}: {stream}"),
            (read_model is None, f"read model: {read_model}"),
        ) if not ok
    ]  # fmt: skip
    return Readiness(nats=nats, stream=stream is None, read_model=read_model is None,
                     detail="; ".join(missing) or "ready")  # fmt: skip


async def _stream_ready(context: ApiContext) -> str | None:
    """None when the events stream exists, else why not."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await context.js.stream_info(EVENTS_STREAM)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g}s"
    except (NatsError, JetStreamError) as exc:
        return str(exc) or type(exc).__name__
    return None


async def _read_model_ready(context: ApiContext) -> str | None:
    """None when a projector answers SELECT 1, else why not."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await request_read_model(context.nc, "SELECT 1", max_rows=1, timeout=READY_TIMEOUT)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g}s"
    except SqlError as exc:
        return str(exc)
    except NatsError as exc:
        return str(exc) or type(exc).__name__
    return None


class RefreshBeforeScrape:
    """ASGI middleware: before GET /metrics is served, the snapshot is refreshed (bounded).
    The /metrics route is synchronous (prometheus-client's `generate_latest`); the figures
    need NATS requests, which are made here, on the event loop."""

    def __init__(self, app: ASGIApp, snapshot: OpsSnapshot, context: ApiContext) -> None:
        self.app, self.snapshot, self.context = app, snapshot, context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await self.snapshot.refresh(self.context.nc)
        await self.app(scope, receive, send)


@functools.cache
def ops_snapshot(registry: CollectorRegistry) -> OpsSnapshot:
    """The registry's snapshot and its collector, made once: an API started again in the same
    process (a supervised restart, `vigil eval`'s one per scenario) refreshes the same one
    instead of failing on `Duplicated timeseries`."""
    snapshot = OpsSnapshot()
    registry.register(OpsCollector(snapshot))
    return snapshot


def add_routes(app: FastAPI, registry: CollectorRegistry) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext), and the
    figures of the stream, its consumers and the read model to `registry` (served by the
    app's /metrics)."""
    app.include_router(router)
    snapshot = ops_snapshot(registry)
    app.add_middleware(RefreshBeforeScrape, snapshot=snapshot, context=app.state.context)
