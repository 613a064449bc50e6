"""The tool workers: a shared durable consumer of `*.ToolRequested` that runs each tool and
appends `ToolCompleted` or `ToolFailed` (with `duration_ms`).

Requests are handled as soon as a slot frees, so the calls of one model turn run at the same
time across every worker of the pool. The outcome's event id is derived from the tool call, so
a request delivered again (a worker killed before its ack) records one outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import ValidationError

from eventlog.consumer import ConsumerSpec, Received, consume
from eventlog.envelope import new_event, subject_for
from eventlog.payloads import ToolCompleted, ToolFailed, ToolRequested
from eventlog.publisher import EventPublisher
from responder.tools import ToolContext, ToolRegistry, ToolSettings, UnknownTool
from responder.tools.config_file import one_line

log = logging.getLogger(__name__)
SOURCE = "worker"
DURABLE = "tool-workers"
OUTCOME_NAMESPACE = uuid.UUID("0f3a4b52-7d1e-4c0a-9b8f-1e2d3c4b5a69")
MAX_RESULT_BYTES = 64 * 1024  # a result is for a model to read: a summary, never raw data
MAX_ERROR_CHARS = 2000  # an error too: a tool's exception may carry a whole response body


class BadArguments(ValueError):
    """The arguments do not fit the tool's model; the message names the field."""


def worker_spec(concurrency: int = 16) -> ConsumerSpec:
    """Starts at the next request: a new pool does not run an old investigation's tools."""
    return ConsumerSpec(
        durable=DURABLE,
        filter_subject=subject_for("*", "ToolRequested"),
        concurrency=concurrency,
        deliver="new",
        in_incident_order=False,  # one turn's calls run at the same time
        prefetch=0,  # a call waits for no other here: another worker may be free
    )


async def run_workers(
    js: JetStreamContext,
    registry: ToolRegistry,
    stop: asyncio.Event,
    *,
    nc: NATS,
    settings: ToolSettings,
    concurrency: int = 16,
    ready: asyncio.Event | None = None,
) -> None:
    """Run requests until `stop`; `nc` is the connection `js` runs on (tools make requests
    on it: the read model's SQL service)."""
    publisher = EventPublisher(js)

    async def handle(received: Received) -> None:
        await run_request(received, registry, publisher, js=js, nc=nc, settings=settings)

    await consume(js, worker_spec(concurrency), handle, stop=stop, ready=ready)


async def run_request(
    received: Received,
    registry: ToolRegistry,
    publisher: EventPublisher,
    *,
    js: JetStreamContext,
    nc: NATS,
    settings: ToolSettings,
) -> None:
    """Run one ToolRequested and append its outcome (raises only what publishing raised)."""
    request = received.event.data
    assert isinstance(request, ToolRequested)
    started = time.monotonic()
    outcome: ToolCompleted | ToolFailed
    try:
        context = _context(received, request, js, nc, settings)
        result = await _run(context, request, registry)
        outcome = ToolCompleted(tool_call_id=request.tool_call_id, tool_name=request.tool_name,
                                result=result, duration_ms=_ms(started),
                                attempt=request.attempt)  # fmt: skip
    except TimeoutError:
        outcome = ToolFailed(tool_call_id=request.tool_call_id, tool_name=request.tool_name,
                             error=f"no answer within {request.timeout_seconds:g}s",
                             timed_out=True, duration_ms=_ms(started),
                             attempt=request.attempt)  # fmt: skip
    except Exception as exc:  # the tool's own failure is the fact to record, not ours
        outcome = ToolFailed(tool_call_id=request.tool_call_id, tool_name=request.tool_name,
                             error=_reason(exc), duration_ms=_ms(started),
                             attempt=request.attempt)  # fmt: skip
    incident = received.event.incident_id
    outcome_event = new_event(
        outcome, incident_id=incident, source=SOURCE,
        event_id=outcome_id(incident, request.attempt, request.tool_call_id),
        caused_by=received.event,
    )  # fmt: skip
    await publisher.publish(outcome_event)


def _context(
    received: Received,
    request: ToolRequested,
    js: JetStreamContext,
    nc: NATS,
    settings: ToolSettings,
) -> ToolContext:
    now = request.now or datetime.now(UTC)
    return ToolContext(
        incident_id=received.event.incident_id,
        now=now,
        onset=min(request.onset, now) if request.onset else None,  # never past now either
        js=js,
        nc=nc,
        settings=settings,
    )


async def _run(context: ToolContext, request: ToolRequested, registry: ToolRegistry) -> Any:
    tool = registry.get(request.tool_name)
    try:
        args = tool.args.model_validate(request.args)
    except ValidationError as exc:
        raise BadArguments(f"bad arguments for {tool.name}: {one_line(exc, 'args')}") from None
    async with asyncio.timeout(request.timeout_seconds):
        result = await tool.run(context, args)
    raw = orjson.dumps(result, default=str)  # once: to measure it and to make it plain JSON
    if len(raw) > MAX_RESULT_BYTES:
        raise ValueError(
            f"{tool.name} returned {len(raw)} bytes; a result may take {MAX_RESULT_BYTES}"
        )
    return orjson.loads(raw)


def outcome_id(incident_id: str, attempt: int, tool_call_id: str) -> uuid.UUID:
    """The id of a call's outcome: a request run twice (redelivered) records one."""
    return uuid.uuid5(OUTCOME_NAMESPACE, f"{incident_id}|{attempt}|{tool_call_id}")


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnknownTool | BadArguments):
        reason = str(exc)  # says it all: no class name to read past
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return shorter(reason, MAX_ERROR_CHARS)


def shorter(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
