"""Tool workers running in a test, and the outcomes they append, as they are appended."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from eventlog.envelope import Event, parse_event
from eventlog.payloads import ToolCompleted, ToolFailed
from responder.tools import ToolRegistry, ToolSettings
from responder.worker import run_workers


class Outcomes:
    """ToolCompleted / ToolFailed as they are appended, by tool call id."""

    def __init__(self) -> None:
        self.by_call: dict[str, Event] = {}
        self._changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event.data, ToolCompleted | ToolFailed):
            self.by_call[event.data.tool_call_id] = event
            self._changed.set()

    async def of(self, *calls: str) -> list[Any]:
        async with asyncio.timeout(20):
            while not all(c in self.by_call for c in calls):
                self._changed.clear()
                await self._changed.wait()
        return [self.by_call[c].data for c in calls]


async def workers(
    nc: NATS, registry: ToolRegistry, settings: ToolSettings | None = None
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """The workers running on `nc` until the returned event is set; the task ends then."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_workers(nc.jetstream(), registry, stop, nc=nc, ready=ready,
                    settings=settings or ToolSettings())
    )  # fmt: skip
    await asyncio.wait_for(ready.wait(), 20)
    return stop, task
