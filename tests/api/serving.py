"""The API in process against the test's nats-server, and a projector answering SQL over NATS
(as `vigil projector` does), for tests of /api/v1's commands, SQL and ops routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from alertmanager.alert_index import AlertIndex
from api.app import ApiContext, WebhookConfig, create_app
from api.auth import ApiToken
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from tests.eventlog.projecting import projecting_with_sql

OPERATE = "ana-operate-token-000001"
READ = "rob-read-token-0000000001"
TOKENS = [
    ApiToken(name="ana", scope="operate", token=SecretStr(OPERATE)),
    ApiToken(name="rob", scope="read", token=SecretStr(READ)),
]
AS_ANA = {"Authorization": f"Bearer {OPERATE}"}
AS_ROB = {"Authorization": f"Bearer {READ}"}


@contextlib.asynccontextmanager
async def api_app(nc: NATS, **context: Any) -> AsyncIterator[FastAPI]:
    """The whole app (webhook, /metrics, /api/v1) with ana (operate) and rob (read)."""
    js = nc.jetstream()
    index = await AlertIndex.open(js)
    try:
        yield create_app(
            EventPublisher(js, ack_timeout=2.0),
            index,
            WebhookConfig(token="webhook-token-00001", timeout=2.0),
            registry=CollectorRegistry(),
            context=ApiContext(nc=nc, **({"tokens": TOKENS} | context)),
        )
    finally:
        await index.close()


@contextlib.asynccontextmanager
async def api(nc: NATS, **context: Any) -> AsyncIterator[httpx.AsyncClient]:
    """`api_app`, and an httpx client calling it in process."""
    async with api_app(nc, **context) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
            yield client


@contextlib.asynccontextmanager
async def projector_serving(nc: NATS, path: Path) -> AsyncIterator[Projector]:
    """A projector following the stream into `path` and answering read-only SQL over NATS."""
    async with projecting_with_sql(nc, path, sql_timeout=5.0, max_rows=1000) as projector:
        yield projector
