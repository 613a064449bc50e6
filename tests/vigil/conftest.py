"""Fixtures for the `vigil` command line tests: every process a test starts is stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from vigil_cli_support import StartUp, VigilUp, start_up


@pytest.fixture
async def vigil_up() -> AsyncIterator[StartUp]:
    """start(data_dir, **settings) runs `vigil up`; all of them are stopped at teardown
    (SIGTERM, then SIGKILL), and so is any nats-server a test looked up under them."""
    started: list[VigilUp] = []

    async def start(data_dir: Path, **settings: str) -> VigilUp:
        up = await start_up(data_dir, **settings)
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()
