"""Running the responder's roles in a test: investigators and workers on a real nats-server,
and a watch on the stream that waits for what they append (no sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic_ai.models import Model

from eventlog.envelope import Event, new_event, parse_event
from eventlog.payloads import AnomalyDetected
from eventlog.publisher import EventPublisher
from responder.agent import build_agent
from responder.analyst import builtin_model
from responder.investigator import Investigator, run_investigator
from responder.progress import Limits
from responder.tools import ToolRegistry, ToolSettings
from responder.worker import run_workers


class Watch:
    """Every event appended, in stream order, and a way to wait for a condition on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.events.append(parse_event(msg.data))
        self._changed.set()

    def of(self, incident: str, *types: str) -> list[Event]:
        return [
            e for e in self.events if e.incident_id == incident and (not types or e.type in types)
        ]

    async def until(self, condition: Callable[[], Any], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def concluded(self, incident: str, count: int = 1, timeout: float = 30) -> list[Event]:
        await self.until(lambda: len(self.of(incident, "RootCauseConcluded")) >= count, timeout)
        return self.of(incident, "RootCauseConcluded")


@contextlib.asynccontextmanager
async def watching(js: JetStreamContext) -> AsyncIterator[Watch]:
    watch = Watch()
    sub = await js.subscribe("vigil.evt.>", cb=watch.on_message, ordered_consumer=True)
    try:
        yield watch
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def responder(
    js: JetStreamContext,
    registry: ToolRegistry,
    *,
    model: Model | None = None,
    model_name: str = "builtin",
    limits: Limits | None = None,
    investigators: int = 1,
    workers: int = 1,
    now_of: Callable[[Event], datetime] | None = None,
    settings: ToolSettings | None = None,
    **worker_options: Any,
) -> AsyncIterator[list[Investigator]]:
    """Investigators and workers running until the block ends (each its own consumer task on
    the shared durables, as separate processes would be). The workers make their requests on
    the connection `js` runs on."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    made: list[Investigator] = []
    readies = []
    for _ in range(workers):
        ready = asyncio.Event()
        tasks.append(
            asyncio.create_task(
                run_workers(
                    js,
                    registry,
                    stop,
                    nc=js._nc,
                    ready=ready,
                    settings=settings or ToolSettings(),
                    **worker_options,
                )
            )
        )
        readies.append(ready)
    for _ in range(investigators):
        agent = build_agent(model or builtin_model(), registry)
        investigator = Investigator(js, agent, model_name, limits=limits or Limits(), now_of=now_of)
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(run_investigator(investigator, stop, ready=ready)))
        readies.append(ready)
        made.append(investigator)
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(r.wait() for r in readies))
        yield made
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def anomaly(service: str = "checkout", *, name: str = "HighErrorRate", fingerprint: str = "f1",
            starts_at: datetime | None = None, **fields: Any) -> AnomalyDetected:  # fmt: skip
    return AnomalyDetected(
        origin="alertmanager", name=name, fingerprint=fingerprint, service=service,
        starts_at=starts_at or datetime.now(UTC), severity="critical",
        labels={"alertname": name, "service": service}, **fields,
    )  # fmt: skip


async def append(js: JetStreamContext, data: Any, incident: str = "inc-1") -> Event:
    event = new_event(data, incident_id=incident, source="test")
    await EventPublisher(js).publish(event)
    return event
