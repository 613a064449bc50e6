"""Helpers for tests that run the projector against a real nats-server and read its file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from eventlog.envelope import Event
from eventlog.payloads import AnomalyDetected
from eventlog.projector import Projector
from eventlog.sql import DEFAULT_MAX_ROWS
from eventlog.sql_service import serve_sql
from eventlog.store import ProjectionStore
from tests.eventlog.samples import T0, event


@contextlib.asynccontextmanager
async def projecting(
    js: JetStreamContext, path: Path, *, batch: int = 200, fetch_timeout: float = 1.0
) -> AsyncIterator[Projector]:
    """A projector following the stream into the file at `path`, stopped on exit."""
    store = ProjectionStore(path)
    projector = Projector(js, store, batch=batch, fetch_timeout=fetch_timeout)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await task
        store.close()


@contextlib.asynccontextmanager
async def projecting_with_sql(
    nc: NATS,
    path: Path,
    *,
    batch: int = 200,
    fetch_timeout: float = 1.0,
    sql_timeout: float = 10.0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> AsyncIterator[Projector]:
    """`projecting`, and the SQL service over its file that the API and the tools ask on the
    bus (as `vigil projector` runs them)."""
    async with projecting(nc.jetstream(), path, batch=batch, fetch_timeout=fetch_timeout) as p:
        service = await serve_sql(
            nc, p.store.con, p.store.db_id, timeout=sql_timeout, max_rows=max_rows
        )
        try:
            yield p
        finally:
            await service.stop()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def fired(fp: str, minute: float, incident: str = "inc-1", severity: str = "warning") -> Event:
    return event(
        AnomalyDetected(origin="alertmanager", name="HighLatency", fingerprint=fp, starts_at=T0,
                        service="api", severity=severity),
        incident, minute,
    )  # fmt: skip
