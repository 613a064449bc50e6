"""The real parts tests talk to: nats-server on a free loopback port with a temp store,
and DuckDB files in tmp_path. Nothing of Vigil's is mocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from eventlog.stream import connect, ensure_streams
from vigil.broker import EmbeddedNats


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A running nats-server with JetStream on a free port; restartable via stop()/start()."""
    server = EmbeddedNats(store_dir=tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A client connected to `nats_server`, reconnecting forever."""
    client = await connect(nats_server.url, name="vigil-test")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    """JetStream with Vigil's streams created."""
    context = nc.jetstream()
    await ensure_streams(context)
    return context


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's DuckDB file lives."""
    return tmp_path / "vigil.duckdb"
