"""The API of /api/v1 for tests of its queries, against real parts: the test's nats-server,
a projector following the stream into a DuckDB file and answering SQL on the bus, and the app
(in process over ASGI, or under uvicorn on a free loopback port for streaming clients)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from alertmanager.alert_index import AlertIndex
from api.app import ApiContext, WebhookConfig, create_app
from api.auth import ApiToken
from eventlog.envelope import Event
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from tests.eventlog.projecting import projecting_with_sql
from vigil.app import serve_http

READ_TOKEN = "read-token-0123456789"
OPERATE_TOKEN = "operate-token-0123456789"
TOKENS = [
    ApiToken.parse(f"reader:read:{READ_TOKEN}"),
    ApiToken.parse(f"ops:operate:{OPERATE_TOKEN}"),
]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


@dataclass
class ReadModel:
    """The projector of the test: `publish` returns once the events are in the read model."""

    js: JetStreamContext
    projector: Projector

    async def publish(self, *events: Event) -> int:
        acks = await EventPublisher(self.js).publish_many(list(events))
        last = max(ack.seq for ack in acks)
        await self.projector.wait_for(last)
        return last


@contextlib.asynccontextmanager
async def read_model(nc: NATS, js: JetStreamContext, path: Path) -> AsyncIterator[ReadModel]:
    """A projector following the stream into `path`, its SQL service on the bus."""
    # fetch_timeout: it stops within 0.1 s
    async with projecting_with_sql(nc, path, batch=2000, fetch_timeout=0.1) as projector:
        yield ReadModel(js, projector)


@contextlib.asynccontextmanager
async def api_app(nc: NATS, **context: Any) -> AsyncIterator[FastAPI]:
    """The whole app, /api/v1 included; the context's tokens default to TOKENS."""
    js = nc.jetstream()
    index = await AlertIndex.open(js)
    app = create_app(
        EventPublisher(js),
        index,
        WebhookConfig(token="webhook-token"),
        registry=CollectorRegistry(),
        context=ApiContext(nc=nc, **({"tokens": TOKENS, "sql_timeout": 10.0} | context)),
    )
    try:
        yield app
    finally:
        await index.close()


def in_process(app: FastAPI, client: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client calling `app` over ASGI, as a peer at `client`."""
    transport = httpx.ASGITransport(app=app, client=(client, 50_000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """`app` under uvicorn on a free port of 127.0.0.1 (as `vigil api` runs it): its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_http(app, sock, stop, on_ready=ready.set, grace=1.0))
    await ready.wait()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        await task
        sock.close()
