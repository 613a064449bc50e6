"""Watching the stream in tests: every event as it is appended, awaited rather than slept for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from eventlog.envelope import Event, parse_event


class Seen:
    """Every event on the stream, from its first, as they come."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.events.append(parse_event(msg.data))
        self._changed.set()

    async def first(self, match: Callable[[Event], bool], timeout: float = 20.0) -> Event:
        """The first event that `match`es: awaited as events come, not slept for."""
        async with asyncio.timeout(timeout):
            while not any(match(e) for e in self.events):
                self._changed.clear()
                await self._changed.wait()
        return next(e for e in self.events if match(e))


def of(kind: str, step: int | None = None) -> Callable[[Event], bool]:
    return lambda e: e.type == kind and (step is None or getattr(e.data, "step", None) == step)


@pytest.fixture
async def seen(js: JetStreamContext) -> AsyncIterator[Seen]:
    """The stream's events as they are appended."""
    watch = Seen()
    sub = await js.subscribe("vigil.evt.>", cb=watch.on_message, ordered_consumer=True)
    yield watch
    await sub.unsubscribe()
