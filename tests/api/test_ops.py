"""POST /api/v1/sql, /healthz, /readyz and /metrics against a real nats-server and a real
projector answering from its DuckDB file over NATS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from alertmanager.alert_index import AlertIndex
from api.app import ApiContext, WebhookConfig, create_app
from eventlog.envelope import Event
from eventlog.payloads import InvestigationStarted, ToolCompleted, ToolFailed, ToolRequested
from eventlog.publisher import EventPublisher
from eventlog.sql_service import SQL_READ_SUBJECT
from eventlog.stream import EVENTS_STREAM
from tests.api.serving import AS_ANA, AS_ROB, api, projector_serving
from tests.eventlog.remediation_story import remediation_story
from tests.eventlog.samples import concluded, event
from tests.responder.running import anomaly
from vigil.broker import EmbeddedNats

NO_PROJECTOR = "no read model answers on vigil.sql.read (is a Vigil projector running?)"


@pytest.fixture
async def client(nc: NATS, js: JetStreamContext) -> AsyncIterator[httpx.AsyncClient]:
    async with api(nc) as c:
        yield c


async def publish(js: JetStreamContext, events: list[Event]) -> int:
    """Append `events`; the stream sequence of the last."""
    acks = await EventPublisher(js).publish_many(events)
    return acks[-1].seq


def investigated() -> list[Event]:
    """inc-m: a concluded attempt with four tool calls (one still out); inc-n: one running,
    inc-p: one concluded partial."""
    calls = [("c1", "promql", 120.0, True), ("c2", "promql", 3000.0, True),
             ("c3", "logs", 40_000.0, False)]  # fmt: skip
    told = [event(anomaly("api"), "inc-m"), event(InvestigationStarted(model="m"), "inc-m")]
    for call_id, tool, ms, ok in calls:
        told.append(event(ToolRequested(tool_call_id=call_id, tool_name=tool), "inc-m"))
        outcome = (ToolCompleted(tool_call_id=call_id, tool_name=tool, duration_ms=ms) if ok
                   else ToolFailed(tool_call_id=call_id, tool_name=tool, error="timeout",
                                   timed_out=True, duration_ms=ms))  # fmt: skip
        told.append(event(outcome, "inc-m"))
    told.append(event(ToolRequested(tool_call_id="c4", tool_name="logs"), "inc-m"))
    told.append(event(concluded(attempt=1), "inc-m"))
    told += [event(anomaly("db"), "inc-n"), event(InvestigationStarted(model="m"), "inc-n")]
    told += [event(anomaly("db"), "inc-p"), event(InvestigationStarted(model="m"), "inc-p"),
             event(concluded(attempt=1, partial_reason="ran out of time"), "inc-p")]  # fmt: skip
    return told


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_sql_answers_from_the_read_model_within_its_limits(
    nc: NATS, js: JetStreamContext, db_path: Path
) -> None:
    last = await publish(js, investigated())
    async with projector_serving(nc, db_path) as projector, api(nc, sql_max_rows=3) as c:
        await projector.wait_for(last)
        query = "SELECT incident_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1"
        answer = await c.post("/api/v1/sql", headers=AS_ROB, json={"query": query})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"columns": ["incident_id", "n"],
                                 "rows": [["inc-m", 10], ["inc-n", 2], ["inc-p", 3]],
                                 "truncated": False}  # fmt: skip
        one = await c.post("/api/v1/sql", headers=AS_ROB,
                           json={"query": "SELECT * FROM events", "max_rows": 1})  # fmt: skip
        assert len(one.json()["rows"]) == 1 and one.json()["truncated"] is True
        capped = await c.post("/api/v1/sql", headers=AS_ROB,
                              json={"query": "SELECT * FROM events", "max_rows": 100})  # fmt: skip
        assert len(capped.json()["rows"]) == 3 and capped.json()["truncated"] is True


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("DELETE FROM events", "only read statements run: DELETE is refused"),
        ("SELECT 1; SELECT 2", "one statement per query, found 2"),
        ("SELEC 1", "SQL syntax error"),
        ("SELECT * FROM read_csv('/etc/passwd')", None),
        ("SELECT * FROM no_such_table", None),
    ],
)
async def test_sql_refusals_are_400_with_the_reason(
    nc: NATS, js: JetStreamContext, db_path: Path, query: str, reason: str | None
) -> None:
    async with projector_serving(nc, db_path), api(nc) as c:
        answer = await c.post("/api/v1/sql", json={"query": query}, headers=AS_ANA)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert detail and (reason is None or detail.startswith(reason)), detail


async def test_sql_without_a_projector_is_503_saying_so(client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/v1/sql", json={"query": "SELECT 1"}, headers=AS_ROB)
    assert answer.status_code == 503
    assert answer.json() == {"detail": NO_PROJECTOR}


async def test_sql_bodies_and_tokens_are_checked(client: httpx.AsyncClient) -> None:
    for body, detail in (
        ({"query": ""}, "body.query: String should have at least 1 character"),
        ({"query": "SELECT 1", "max_rows": 0}, "body.max_rows: Input should be greater than "
         "or equal to 1"),
        ({"sql": "SELECT 1"}, "body.query: Field required; body.sql: Extra inputs are not "
         "permitted"),
    ):  # fmt: skip
        answer = await client.post("/api/v1/sql", json=body, headers=AS_ROB)
        assert (answer.status_code, answer.json()) == (422, {"detail": detail})
    anonymous = await client.post("/api/v1/sql", json={"query": "SELECT 1"})
    assert anonymous.status_code == 401


async def test_readyz_says_what_is_not_ready_until_a_projector_answers(
    nc: NATS, js: JetStreamContext, db_path: Path, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    waiting = await client.get("/readyz")
    assert waiting.status_code == 503
    assert waiting.json() == {"nats": True, "stream": True, "read_model": False,
                              "detail": f"read model: {NO_PROJECTOR}"}  # fmt: skip
    async with projector_serving(nc, db_path):
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"nats": True, "stream": True, "read_model": True, "detail": "ready"}


async def test_readyz_without_the_stream(nc: NATS) -> None:
    """The streams are made by `vigil up` (ensure_streams): none yet, not ready."""
    async with api(nc) as c:
        answer = await c.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert (body["nats"], body["stream"], body["read_model"]) == (True, False, False)
    assert body["detail"].startswith(f"stream {EVENTS_STREAM}: ")


async def test_metrics_tell_what_was_published_consumed_and_projected(
    nc: NATS, js: JetStreamContext, db_path: Path, client: httpx.AsyncClient
) -> None:
    story = investigated() + remediation_story()
    await js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        durable_name="watcher", ack_policy=AckPolicy.EXPLICIT,
        filter_subject="vigil.evt.*.ToolRequested"))  # fmt: skip
    last = await publish(js, story)
    watcher = await js.pull_subscribe_bind("watcher", stream=EVENTS_STREAM)
    first, _second = await watcher.fetch(2, timeout=5)
    await first.ack_sync()  # the second is delivered, not acknowledged
    async with projector_serving(nc, db_path) as projector:
        await projector.wait_for(last)
        samples = scraped((await client.get("/metrics")).text)
    stream = ("stream", EVENTS_STREAM)

    def of(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert of("vigil_scrape_source_up", source="nats") == 1.0
    assert of("vigil_scrape_source_up", source="read_model") == 1.0
    assert of("vigil_events_published_total", stream=EVENTS_STREAM) == len(story) == last
    assert of("vigil_stream_messages", stream=EVENTS_STREAM) == len(story)
    watched = {"stream": stream[1], "consumer": "watcher"}
    requested = sum(1 for e in story if e.type == "ToolRequested")
    assert of("vigil_consumer_delivered_total", **watched) == 2
    assert of("vigil_events_consumed_total", **watched) == 1
    assert of("vigil_consumer_ack_pending_messages", **watched) == 1
    assert of("vigil_consumer_pending_messages", **watched) == requested - 2
    projecting = {"stream": stream[1], "consumer": projector.durable}
    assert of("vigil_consumer_pending_messages", **projecting) == 0
    assert of("vigil_consumer_delivered_total", **projecting) == len(story)
    outcomes = {o: of("vigil_investigations", outcome=o) for o in ("running", "concluded",
                                                                  "partial")}  # fmt: skip
    assert outcomes == {"running": 1, "concluded": 1, "partial": 1}
    sagas = {
        o: of("vigil_sagas", outcome=o)
        for o in (
            "worked",
            "unverified",
            "dry_run",
            "compensated",
            "rejected",
            "escalated",
            "in_progress",
        )
    }
    assert sagas == {"worked": 2, "unverified": 0, "dry_run": 1, "compensated": 2,
                     "rejected": 2, "escalated": 1, "in_progress": 1}  # fmt: skip
    promql = {le: of("vigil_tool_call_duration_seconds_bucket", tool="promql", le=le)
              for le in ("0.1", "0.25", "2.5", "5.0", "+Inf")}  # fmt: skip
    assert promql == {"0.1": 0, "0.25": 1, "2.5": 1, "5.0": 2, "+Inf": 2}
    assert of("vigil_tool_call_duration_seconds_sum", tool="promql") == pytest.approx(3.12)
    assert of("vigil_tool_call_duration_seconds_count", tool="logs") == 1  # c4 is still out
    assert of("vigil_tool_call_duration_seconds_bucket", tool="logs", le="30.0") == 0
    assert of("vigil_tool_call_duration_seconds_bucket", tool="logs", le="60.0") == 1


async def test_a_hung_read_model_does_not_hang_the_scrape(
    nc: NATS, js: JetStreamContext, client: httpx.AsyncClient
) -> None:
    """A projector that takes the request and never answers (a real subscriber on the read
    model's subject): the scrape goes on without its figures, and says so."""
    await publish(js, [event(anomaly("api"), "inc-1")])
    await nc.subscribe(SQL_READ_SUBJECT, cb=_never_answer)
    started = time.monotonic()
    answer = await client.get("/metrics")
    took = time.monotonic() - started
    assert answer.status_code == 200 and took < 5, took
    samples = scraped(answer.text)
    assert samples[("vigil_scrape_source_up", (("source", "read_model"),))] == 0
    assert samples[("vigil_scrape_source_up", (("source", "nats"),))] == 1
    assert samples[("vigil_events_published_total", (("stream", EVENTS_STREAM),))] == 1
    assert not any(name.startswith(("vigil_investigations", "vigil_sagas")) for name, _ in samples)
    assert "vigil_webhook_requests_total" in answer.text  # the app's own metrics stay


async def _never_answer(msg: object) -> None:
    return None


async def test_readyz_with_nats_gone_says_so_and_recovers(
    js: JetStreamContext, client: httpx.AsyncClient, nats_server: EmbeddedNats
) -> None:
    """(No projector here: its own recovery from a NATS restart is tests/eventlog's.)"""
    assert (await client.get("/readyz")).json()["stream"] is True
    await nats_server.stop()
    started = time.monotonic()
    down = await client.get("/readyz")
    assert time.monotonic() - started < 5
    assert down.status_code == 503
    assert (down.json()["nats"], down.json()["stream"]) == (False, False)
    assert down.json()["detail"].startswith("NATS is not connected; ")
    await nats_server.start()
    for _ in range(30):  # until the client has reconnected (each check waits up to 2 s)
        again = await client.get("/readyz")
        if again.json()["nats"] and again.json()["stream"]:
            break
    assert (again.json()["nats"], again.json()["stream"]) == (True, True)


async def test_an_api_made_again_in_one_process_serves_its_metrics(nc: NATS) -> None:
    # `vigil eval` makes an API per scenario, and a supervised restart makes one again, on
    # the same registry: the read model's collector must not be registered twice.
    registry = CollectorRegistry()
    js = nc.jetstream()
    for _ in range(2):
        index = await AlertIndex.open(js)
        try:
            app = create_app(
                EventPublisher(js), index, WebhookConfig(token="webhook-token-00001"),
                registry=registry, context=ApiContext(nc=nc),
            )  # fmt: skip
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as c:
                scraped = await c.get("/metrics")
            assert scraped.status_code == 200
            names = {f.name for f in text_string_to_metric_families(scraped.text)}
            assert "vigil_events_published" in names, names
        finally:
            await index.close()
