"""Wiring: the broker (embedded or given), the streams, and the roles that exist so far."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client as NATS

from eventlog.projector import Projector
from eventlog.sql_service import serve_sql, sql_subject
from eventlog.store import ProjectionStore
from eventlog.stream import connect, ensure_streams
from vigil.broker import EmbeddedNats
from vigil.runtime import clear_runtime, write_runtime
from vigil.settings import Settings

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[tuple[str, EmbeddedNats | None]]:
    """The configured NATS, or an embedded nats-server in the data dir while the block runs."""
    if settings.nats_url:
        yield settings.nats_url, None
        return
    server = EmbeddedNats(
        store_dir=settings.nats_store_dir,
        port=settings.nats_port,
        sync_always=settings.nats_sync_always,
    )
    await server.start()
    try:
        yield server.url, server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def bus(settings: Settings, url: str, name: str) -> AsyncIterator[NATS]:
    """A connection with Vigil's streams in place."""
    nc = await connect(url, name=name)
    try:
        await ensure_streams(
            nc.jetstream(),
            replicas=settings.stream_replicas,
            duplicate_window=settings.duplicate_window_seconds,
        )
        yield nc
    finally:
        if nc.is_connected:
            await nc.drain()
        else:
            await nc.close()  # broker gone: nothing in flight can be delivered anyway


async def run_projector(
    settings: Settings,
    url: str,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Projector], None],
) -> None:
    """The projector and the SQL service that answers for its file."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with bus(settings, url, "vigil-projector") as nc:
        store = ProjectionStore(settings.db_path)
        try:
            projector = Projector(nc.jetstream(), store, batch=settings.projector_batch)
            service = await serve_sql(
                nc,
                store.con,
                store.db_id,
                timeout=settings.sql_timeout_seconds,
                max_rows=settings.sql_max_rows,
            )
            write_runtime(settings.data_dir, nats_url=url, sql_subject=sql_subject(store.db_id))
            on_ready(projector)
            try:
                await projector.run(stop)
            finally:
                clear_runtime(settings.data_dir)
                await service.stop()
        finally:
            store.close()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
