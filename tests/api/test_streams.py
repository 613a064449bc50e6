"""The SSE streams of /api/v1 under uvicorn on 127.0.0.1, read by a real streaming client:
live delivery, resumption with Last-Event-ID, and no consumer left behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from api import queries
from eventlog.envelope import Event
from eventlog.history import incident_events
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from tests.api.reading import READ, api_app, served
from tests.eventlog.samples import agent_step, event
from vigil.broker import EmbeddedNats


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str | None
    data: str
    comment: str | None = None


class SseReader:
    """Frames of a text/event-stream response as they arrive (the parts tests look at)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self, comments: bool = False) -> Frame:
        fields: dict[str, str] = {}
        async for line in self.lines:
            if line == "":
                if "data" in fields:
                    return Frame(fields.get("id"), fields.get("event"), fields["data"])
                if comments and "comment" in fields:
                    return Frame(None, None, "", fields["comment"])
                fields = {}
                continue
            if line.startswith(":"):
                fields["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise AssertionError("the stream ended")

    async def frames(self, n: int) -> list[Frame]:
        return [await asyncio.wait_for(self.next(), 10) for _ in range(n)]


@pytest.fixture
async def url(nc: NATS, js: JetStreamContext) -> AsyncIterator[str]:
    """The API served by uvicorn on a free loopback port."""
    async with api_app(nc) as app, served(app) as base:
        yield base


@contextlib.asynccontextmanager
async def sse(
    base: str, path: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> AsyncIterator[SseReader]:
    async with (
        httpx.AsyncClient(base_url=base, timeout=timeout) as client,
        client.stream("GET", path, headers=READ | (headers or {})) as response,
    ):
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)


def steps(incident: str, first: int, n: int) -> list[Event]:
    return [event(agent_step(i), incident) for i in range(first, first + n)]


async def publish(js: JetStreamContext, events: list[Event]) -> list[int]:
    return [ack.seq for ack in await EventPublisher(js).publish_many(events)]


async def consumers(js: JetStreamContext) -> int:
    return (await js.stream_info(EVENTS_STREAM)).state.consumer_count


@contextlib.asynccontextmanager
async def deletions(nc: NATS) -> AsyncIterator[asyncio.Queue[str]]:
    """The names of the stream's consumers as the server deletes them (its advisories)."""
    deleted: asyncio.Queue[str] = asyncio.Queue()

    async def note(msg: Msg) -> None:
        deleted.put_nowait(orjson.loads(msg.data)["consumer"])

    sub = await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.DELETED.{EVENTS_STREAM}.*", cb=note)
    await nc.flush()
    try:
        yield deleted
    finally:
        await sub.unsubscribe()


async def test_an_incidents_stream_starts_at_its_first_event_and_goes_on_live(
    url: str, js: JetStreamContext
) -> None:
    history = await publish(js, steps("inc-1", 0, 3) + steps("inc-2", 0, 2))
    async with sse(url, "/api/v1/incidents/inc-1/stream") as stream:
        first = await stream.frames(3)
        assert [f.id for f in first] == [str(s) for s in history[:3]]
        assert {f.event for f in first} == {"AgentStep"}
        data = orjson.loads(first[0].data)
        stored = (await incident_events(js, "inc-1"))[0]
        assert data == orjson.loads(stored.event.to_json()) | {"seq": stored.seq}
        live = await publish(js, steps("inc-2", 2, 1) + steps("inc-1", 3, 2))
        assert [f.id for f in await stream.frames(2)] == [str(s) for s in live[1:]]


async def test_last_event_id_resumes_with_no_gap_and_no_duplicate(
    url: str, js: JetStreamContext
) -> None:
    seqs = await publish(js, steps("inc-r", 0, 4))
    async with sse(url, "/api/v1/incidents/inc-r/stream") as stream:
        seen = [int(f.id or 0) for f in await stream.frames(2)]
    more = await publish(js, steps("inc-r", 4, 3))  # while the client was away
    path = f"/api/v1/incidents/inc-r/stream?after={seqs[0]}"  # the header wins over the URL
    async with sse(url, path, {"Last-Event-ID": str(seen[-1])}) as stream:
        seen += [int(f.id or 0) for f in await stream.frames(5)]
        later = await publish(js, steps("inc-r", 7, 1))
        seen += [int(f.id or 0) for f in await stream.frames(1)]
    assert seen == seqs + more + later


async def test_the_stream_of_all_incidents_gives_new_events_only(
    url: str, js: JetStreamContext
) -> None:
    await publish(js, steps("inc-old", 0, 3))
    async with sse(url, "/api/v1/stream") as stream:
        new = await publish(js, steps("inc-a", 0, 1) + steps("inc-b", 0, 1))
        frames = await stream.frames(2)
    assert [int(f.id or 0) for f in frames] == new
    assert [orjson.loads(f.data)["incident_id"] for f in frames] == ["inc-a", "inc-b"]
    async with sse(url, "/api/v1/stream", {"Last-Event-ID": "2"}) as stream:
        assert [int(f.id or 0) for f in await stream.frames(3)] == [3, *new]


async def test_the_consumer_is_deleted_when_the_client_goes_away(
    url: str, nc: NATS, js: JetStreamContext
) -> None:
    await publish(js, steps("inc-c", 0, 1))
    before = await consumers(js)
    async with deletions(nc) as deleted:
        for path in ("/api/v1/incidents/inc-c/stream", "/api/v1/stream"):
            async with sse(url, path) as stream:
                if path.endswith("inc-c/stream"):
                    await stream.frames(1)
                assert await consumers(js) == before + 1
                serving = {c.name for c in await js.consumers_info(EVENTS_STREAM)}
            gone = await asyncio.wait_for(deleted.get(), 10)
            assert gone in serving
            assert await consumers(js) == before


async def test_keep_alive_comments_while_nothing_happens(
    nc: NATS, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "PING_SECONDS", 0.2)  # 15 s in service
    async with api_app(nc) as app, served(app) as base, sse(base, "/api/v1/stream") as stream:
        frame = await asyncio.wait_for(stream.next(comments=True), 5)
    assert frame.comment is not None and frame.comment.startswith("ping")


@pytest.mark.parametrize(
    ("path", "headers", "status", "says"),
    [
        ("/api/v1/incidents/nope/stream", {}, 404, "no incident 'nope'"),
        ("/api/v1/incidents/a.b/stream", {}, 422, "incident_id"),
        ("/api/v1/stream", {"Last-Event-ID": "x1"}, 422, "Last-Event-ID 'x1' is not a stream"),
        ("/api/v1/stream?after=-3", {}, 422, "after"),
        ("/api/v1/stream", {"Authorization": "Bearer wrong-token"}, 401, "VIGIL_API_TOKENS"),
    ],
)
async def test_a_stream_refused_says_why(
    url: str, path: str, headers: dict[str, str], status: int, says: str
) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.get(path, headers=READ | headers)
    assert answer.status_code == status
    assert says in str(answer.json()["detail"])


@pytest.mark.slow
async def test_a_stream_goes_on_after_the_nats_server_restarts(
    nats_server: EmbeddedNats, url: str, js: JetStreamContext
) -> None:
    """The ordered consumer lives in the server's memory: it is lost with the server, and
    recreated by the client after the last sequence sent once the heartbeats stop."""
    before = await publish(js, steps("inc-n", 0, 2))
    async with sse(url, "/api/v1/incidents/inc-n/stream", timeout=40) as stream:
        assert [int(f.id or 0) for f in await stream.frames(2)] == before
        await nats_server.stop()
        await nats_server.start()
        after = await publish(js, steps("inc-n", 2, 2))
        frames = [await asyncio.wait_for(stream.next(), 30) for _ in after]
        assert [int(f.id or 0) for f in frames] == after
