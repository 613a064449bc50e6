"""Queries of /api/v1: incidents, their timelines, and their events live (SSE).

Lists come from the read model (over the bus: the projector holds the DuckDB file); one
incident's timeline, report and sagas come from the stream, which the read model lags. The
live streams are Server-Sent Events whose ids are stream sequences, so a client that
reconnects with `Last-Event-ID` gets every event after the last it saw, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request
from nats.errors import Error as NatsError
from pydantic import AwareDatetime, TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import Reader
from api.incident_list import MAX_LIMIT, STATUSES, BadQuery, Cursor, IncidentFilter, get_incident
from api.incident_list import list_incidents as read_incidents
from api.incident_view import awaiting_approval, latest_report, sagas_of
from api.models import IncidentDetail, IncidentPage, Timeline, TimelineEvent, Whoami, timeline_json
from eventlog.envelope import INCIDENT_ID_PATTERN
from eventlog.history import StoredEvent, incident_events
from eventlog.live import (
    ALL_EVENTS,
    EventFollower,
    has_events,
    incident_subject,
    last_seq,
    read_after,
)
from eventlog.sql import SqlError

if TYPE_CHECKING:
    from api.app import ApiContext

SSE: dict[int | str, Any] = {200: {"content": {"text/event-stream": {}}}}
PING_SECONDS = 15  # keep-alive comments, under proxies' idle timeouts (nginx: 60 s)
MAX_EVENTS = 1000  # per /events page
MAX_SEQ = 2**53  # sequences beyond any stream's, and exact in every JSON reader
TIME = TypeAdapter(AwareDatetime)
NOT_A_SEQ = f"an integer from 0 to {MAX_SEQ}"
IncidentId = Annotated[
    str, Path(pattern=INCIDENT_ID_PATTERN, description="the incident's id", examples=["inc-7f3a"])
]
After = Annotated[
    int | None,
    Query(ge=0, le=MAX_SEQ, description="a stream sequence: only events after it", examples=[42]),
]


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
    app.include_router(router)


router = APIRouter(prefix="/api/v1", tags=["queries"])


@router.get("/whoami")
async def whoami(principal: Reader) -> Whoami:
    """Who the token is and what it may do (`read`, or `operate`: commands too)."""
    return Whoami(name=principal.name, scope=principal.scope)


@router.get("/incidents", responses={422: {"description": "a filter or cursor is invalid"}})
async def incidents(
    request: Request,
    _: Reader,
    status: Annotated[str | None, Query(description=f"one of {', '.join(STATUSES)}")] = None,
    service: Annotated[str | None, Query(description="the incident's service")] = None,
    since: Annotated[str | None, Query(description="opened at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="opened before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the page before")] = None,
) -> IncidentPage:
    """Incidents, newest `opened_at` first, from the read model (it lags the stream by the
    projector's delay). 422 names a bad filter; 503 when no projector answers."""
    try:
        filters = IncidentFilter(status, service, _time("since", since), _time("until", until))
        after = Cursor.decode(cursor) if cursor is not None else None
    except BadQuery as exc:
        raise HTTPException(422, str(exc)) from None
    ctx = _context(request)
    try:
        page, more = await read_incidents(
            ctx.nc, filters, limit=limit, cursor=after, timeout=ctx.sql_timeout + 5
        )
    except SqlError as exc:
        raise HTTPException(503, f"the read model did not answer: {exc}") from None
    return IncidentPage(incidents=page, next_cursor=more.encode() if more else None)


@router.get("/incidents/{incident_id}", responses={404: {"description": "no such incident"}})
async def incident(request: Request, _: Reader, incident_id: IncidentId) -> IncidentDetail:
    """The incident's read-model row, its latest report and its sagas (these two from the
    stream, up to date). 404 when the stream holds no event of it."""
    ctx = _context(request)
    try:
        stored, row = await asyncio.gather(
            incident_events(ctx.nc.jetstream(), incident_id),
            get_incident(ctx.nc, incident_id, timeout=ctx.sql_timeout + 5),
        )
    except SqlError as exc:
        raise HTTPException(503, f"the read model did not answer: {exc}") from None
    except NatsError as exc:
        raise HTTPException(503, f"the event stream did not answer: {exc!r}") from None
    if not stored:
        raise HTTPException(404, f"no incident {incident_id!r}: the stream has no event of it")
    events = [s.event for s in stored]
    concluded = latest_report(events)
    sagas = sagas_of(events, datetime.now(UTC), ctx.approval_expiry)
    return IncidentDetail(
        incident=row, report=concluded.report if concluded else None,
        report_attempt=concluded.attempt if concluded else None, sagas=sagas,
        awaiting_approval=awaiting_approval(sagas), last_seq=stored[-1].seq,
    )  # fmt: skip


@router.get("/incidents/{incident_id}/events", responses={404: {"description": "no such incident"}})
async def incident_timeline(
    request: Request,
    _: Reader,
    incident_id: IncidentId,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = MAX_EVENTS,
) -> Timeline:
    """The incident's events in stream order (its black-box timeline), each with its `seq`;
    page on with `after` = the last `seq` received. 404 when the stream has none of it."""
    start = _after(after, "after") or 0
    js = _context(request).nc.jetstream()
    subject = incident_subject(incident_id)
    try:
        page = await read_after(js, subject, after=start, limit=limit)
        if not page and not await has_events(js, subject):
            raise HTTPException(404, f"no incident {incident_id!r}: the stream has no event of it")
    except NatsError as exc:
        raise HTTPException(503, f"the event stream did not answer: {exc!r}") from None
    return Timeline(events=[TimelineEvent.of(s) for s in page])


@router.get(
    "/incidents/{incident_id}/stream",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        404: {"description": "no such incident"},
    },
)
async def incident_stream(
    request: Request, _: Reader, incident_id: IncidentId, after: After = None
) -> EventSourceResponse:
    """Server-Sent Events: the incident's events from its first (or after `Last-Event-ID` /
    `after`, a stream sequence), then each as it is appended; `id` is the sequence, `event`
    the type, `data` the TimelineEvent. A comment every 15 s keeps the connection alive."""
    start = _resume_point(request, after)
    js = _context(request).nc.jetstream()
    subject = incident_subject(incident_id)
    try:
        if not await has_events(js, subject):
            raise HTTPException(404, f"no incident {incident_id!r}: the stream has no event of it")
    except NatsError as exc:
        raise HTTPException(503, f"the event stream did not answer: {exc!r}") from None
    return await _stream(request, subject, 0 if start is None else start)


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses=SSE,
)
async def all_events_stream(
    request: Request, _: Reader, after: After = None
) -> EventSourceResponse:
    """Server-Sent Events of every incident: new events only (or after `Last-Event-ID` /
    `after`); the same frames as an incident's stream."""
    start = _resume_point(request, after)
    js = _context(request).nc.jetstream()
    try:
        start = await last_seq(js) if start is None else start
    except NatsError as exc:
        raise HTTPException(503, f"the event stream did not answer: {exc!r}") from None
    return await _stream(request, ALL_EVENTS, start)


async def _stream(request: Request, subject: str, after: int) -> EventSourceResponse:
    """The consumer is made before the answer starts (a failure is still a 503; once the
    headers are out, every event appended is sent), and deleted when the client goes away or
    the server stops."""
    ctx = _context(request)
    follower = EventFollower(ctx.nc.jetstream(), subject, after=after, until=ctx.stopping)
    try:
        await follower.__aenter__()
    except NatsError as exc:
        raise HTTPException(503, f"the event stream did not answer: {exc!r}") from None
    return EventSourceResponse(_frames(follower), ping=PING_SECONDS)


async def _frames(follower: EventFollower) -> AsyncIterator[ServerSentEvent]:
    try:
        async for stored in follower:
            yield _frame(stored)
    finally:
        # The response's task group is being cancelled: without a shield the first await here
        # would be cancelled too, and the consumer left for the server to reap.
        with anyio.CancelScope(shield=True):
            await follower.close()


def _frame(stored: StoredEvent) -> ServerSentEvent:
    return ServerSentEvent(
        data=orjson.dumps(timeline_json(stored)).decode(),
        event=stored.event.type,
        id=str(stored.seq),
    )


def _context(request: Request) -> ApiContext:
    return request.app.state.context  # type: ignore[no-any-return]


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return TIME.validate_python(value)
    except ValidationError:
        raise HTTPException(
            422, f"{name} {value!r} is not an ISO 8601 time with a zone (2026-11-30T12:00:00Z)"
        ) from None


def _after(value: int | str | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 16:
            raise HTTPException(422, f"{name} {value!r} is not a stream sequence ({NOT_A_SEQ})")
        value = int(value)
    if not 0 <= value <= MAX_SEQ:
        raise HTTPException(422, f"{name} {value} is not a stream sequence ({NOT_A_SEQ})")
    return value


def _resume_point(request: Request, after: int | None) -> int | None:
    """Last-Event-ID (what a browser's EventSource sends when it reconnects) wins over
    `after` (the URL it reconnects to still has the first one)."""
    header = request.headers.get("last-event-id")
    if header is not None and header.strip():
        return _after(header.strip(), "Last-Event-ID")
    return _after(after, "after")
