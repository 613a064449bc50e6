"""Watching the stream in a test: every event as it is appended, awaited rather than slept for."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nats.aio.client import Client as NATS

from eventlog.envelope import Event
from tests.vigil.vigil_cli_support import EventWatch, watch_events

Seen = EventWatch


def of(kind: str, step: int | None = None) -> Callable[[Event], bool]:
    """An event of type `kind` (about step `step`)."""
    return lambda e: e.type == kind and (step is None or getattr(e.data, "step", None) == step)


@pytest.fixture
async def seen(nc: NATS) -> EventWatch:
    """The stream's events, from its first, as they are appended."""
    return await watch_events(nc)
