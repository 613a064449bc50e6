"""GET /api/v1: who am I, the incident list (filters, pagination), one incident, its events;
against a real nats-server and a real projector answering SQL on the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from api.incident_list import Cursor
from eventlog.envelope import Event, new_event
from eventlog.history import incident_events
from eventlog.payloads import (
    IncidentResolved,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    SagaStarted,
    SagaStepStarted,
    SagaStepSucceeded,
)
from eventlog.publisher import EventPublisher
from eventlog.sql_service import serve_sql
from eventlog.store import ProjectionStore
from tests.api.reading import READ, TOKENS, ReadModel, api_app, in_process, read_model
from tests.eventlog.projecting import fired
from tests.eventlog.samples import concluded, event

OPERATE = {"Authorization": f"Bearer {TOKENS[1].token.get_secret_value()}"}
STEP = RemediationAction(action="restart", params={"service": "api"}, compensation="noop")


@pytest.fixture
async def model(nc: NATS, js: JetStreamContext, db_path: Path) -> AsyncIterator[ReadModel]:
    """A projector of the test's stream, answering the read model's SQL on the bus."""
    async with read_model(nc, js, db_path) as m:
        yield m


@pytest.fixture
async def app(nc: NATS, model: ReadModel) -> AsyncIterator[FastAPI]:
    """The API with a read and an operate token."""
    async with api_app(nc) as a:
        yield a


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as c:
        yield c


def opened(incident: str, minute: float, service: str = "api", fp: str | None = None) -> Event:
    """The first anomaly of `incident`, `minute`s after T0: its opened_at."""
    event = fired(fp or f"fp-{incident}", minute, incident)
    data = event.data.model_copy(update={"service": service})
    return new_event(data, incident_id=incident, source="test", occurred_at=event.occurred_at)


# -- who am I, and who may ask -----------------------------------------------------------------


async def test_whoami_names_the_token_and_its_scope(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/whoami", headers=READ)).json() == {
        "name": "reader",
        "scope": "read",
    }
    assert (await client.get("/api/v1/whoami", headers=OPERATE)).json() == {
        "name": "ops",
        "scope": "operate",
    }


async def test_no_token_or_an_unknown_one_is_401_and_says_which(client: httpx.AsyncClient) -> None:
    none = await client.get("/api/v1/incidents")
    assert none.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    assert "needs a bearer token" in none.json()["detail"]
    wrong = await client.get("/api/v1/incidents", headers={"Authorization": "Bearer nope-nope"})
    assert wrong.status_code == 401
    assert "not one of VIGIL_API_TOKENS" in wrong.json()["detail"]


async def test_without_tokens_loopback_is_local_and_others_are_403(nc: NATS) -> None:
    async with api_app(nc, tokens=[]) as app:
        async with in_process(app, client="127.0.0.1") as local:
            me = await local.get("/api/v1/whoami")
            assert me.json() == {"name": "local", "scope": "operate"}
        async with in_process(app, client="10.1.2.3") as remote:
            refused = await remote.get("/api/v1/whoami")
            assert refused.status_code == 403
            assert "loopback clients only" in refused.json()["detail"]
            assert (await remote.get("/api/v1/incidents/inc-1/events")).status_code == 403
        # DNS rebinding: a site's page whose name now resolves to 127.0.0.1 comes from
        # loopback, but its Host and Origin still name the site.
        async with in_process(app, client="127.0.0.1") as local:
            for headers in (
                {"Host": "attacker.example:8080"},
                {"Host": "127.0.0.1:8080", "Origin": "http://attacker.example:8080"},
            ):
                paused = await local.post(
                    "/api/v1/remediation/pause", json={"reason": "x"}, headers=headers
                )
                assert paused.status_code == 403, headers
                assert "addressed to localhost only" in paused.json()["detail"]
            for host in ("localhost:8080", "[::1]:8080", "127.0.0.1"):
                me = await local.get(
                    "/api/v1/whoami", headers={"Host": host, "Origin": f"http://{host}"}
                )
                assert me.status_code == 200, host


# -- the list ----------------------------------------------------------------------------------


async def test_the_list_is_newest_first_with_the_contracts_fields(
    client: httpx.AsyncClient, model: ReadModel
) -> None:
    await model.publish(opened("inc-a", 1), opened("inc-b", 2, "checkout"))
    await model.publish(event(concluded(service="checkout", summary="the v2 deploy"), "inc-b", 3))
    answer = await client.get("/api/v1/incidents", headers=READ)
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert page["next_cursor"] is None
    assert [i["incident_id"] for i in page["incidents"]] == ["inc-b", "inc-a"]
    b = page["incidents"][0]
    assert b == {
        "incident_id": "inc-b",
        "status": "diagnosed",
        "title": "HighLatency",
        "service": "checkout",
        "severity": "warning",
        "opened_at": "2026-11-24T12:02:00Z",
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolution": None,
        "root_cause": "deploy_or_config_change",
        "root_cause_service": "checkout",
        "root_cause_summary": "the v2 deploy",
        "root_cause_confidence": 0.9,
        "last_event_at": "2026-11-24T12:03:00Z",
        "event_count": 2,
    }


async def test_filters_by_status_service_and_time(
    client: httpx.AsyncClient, model: ReadModel
) -> None:
    await model.publish(
        opened("inc-1", 1), opened("inc-2", 10, "o'brien"), opened("inc-3", 20, "o'brien")
    )
    await model.publish(event(IncidentResolved(how="manual", by="alice"), "inc-3", 21))

    async def ids(**params: str) -> list[str]:
        answer = await client.get("/api/v1/incidents", params=params, headers=READ)
        assert answer.status_code == 200, answer.text
        return [i["incident_id"] for i in answer.json()["incidents"]]

    assert await ids(status="resolved") == ["inc-3"]
    assert await ids(status="open") == ["inc-2", "inc-1"]
    assert await ids(service="o'brien") == ["inc-3", "inc-2"]  # a quote, kept as a value
    assert await ids(service="x' OR '1'='1") == []
    assert await ids(service="x'; DELETE FROM incidents; --") == []  # a value, not a statement
    assert await ids(since="2026-11-24T12:10:00Z") == ["inc-3", "inc-2"]
    assert await ids(until="2026-11-24T12:10:00Z") == ["inc-1"]
    assert await ids(since="2026-11-24T13:05:00+01:00", until="2026-11-24T12:20:00Z") == ["inc-2"]
    assert await ids(status="open", service="o'brien") == ["inc-2"]


BAD_FILTERS = [
    ({"status": "closed"}, "status 'closed' is not one of open, investigating, diagnosed"),
    ({"since": "yesterday"}, "since 'yesterday' is not an ISO 8601 time with a zone"),
    ({"until": "2026-11-24T12:00:00"}, "until '2026-11-24T12:00:00' is not an ISO 8601 time"),
    ({"since": "2026-11-25T00:00:00Z", "until": "2026-11-24T00:00:00Z"}, "since must be before"),
    ({"cursor": "not-a-cursor"}, "cursor: not one this API gave"),
    ({"cursor": Cursor(1, "x' OR 1=1 --").encode()}, "cursor: not one this API gave"),
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"service": ""}, "service: give 1 to 256 characters"),
]


async def test_a_bad_filter_is_422_naming_it(client: httpx.AsyncClient) -> None:
    for params, says in BAD_FILTERS:
        answer = await client.get("/api/v1/incidents", params=params, headers=READ)
        assert answer.status_code == 422, params
        assert says in str(answer.json()["detail"]), (params, answer.text)


async def test_pages_hold_every_incident_once_while_new_ones_arrive(
    client: httpx.AsyncClient, model: ReadModel
) -> None:
    # 30 incidents, pairs of them opened at the same instant (the id breaks the tie).
    await model.publish(*(opened(f"inc-{i:02d}", i // 2) for i in range(30)))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "7"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/incidents", params=params, headers=READ)).json()
        seen += [i["incident_id"] for i in page["incidents"]]
        pages += 1
        # Newer incidents arrive between pages: they belong before the first page.
        await model.publish(opened(f"new-{pages}", 100 + pages))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    expected = sorted((f"inc-{i:02d}" for i in range(30)), key=lambda x: (int(x[4:]) // 2, x))
    assert seen == list(reversed(expected))
    everything = await client.get("/api/v1/incidents", params={"limit": "500"}, headers=READ)
    assert len(everything.json()["incidents"]) == 35


async def test_a_page_cut_to_fit_the_bus_is_not_the_last(
    client: httpx.AsyncClient, model: ReadModel
) -> None:
    # Titles of 60 kB: 30 rows do not fit one NATS message (1 MB), so the SQL service drops
    # rows and marks the reply truncated; the list must go on from the last row that came.
    def big(i: int) -> Event:
        event = opened(f"inc-{i:02d}", i)
        data = event.data.model_copy(update={"name": "A" * 60_000})
        return new_event(data, incident_id=event.incident_id, source="test",
                         occurred_at=event.occurred_at)  # fmt: skip

    await model.publish(*(big(i) for i in range(30)))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "50"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/incidents", params=params, headers=READ)).json()
        seen += [i["incident_id"] for i in page["incidents"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages > 1  # the cut happened
    assert seen == [f"inc-{i:02d}" for i in reversed(range(30))]


async def test_no_projector_is_a_503_that_says_so(nc: NATS) -> None:
    async with api_app(nc, sql_timeout=0.5) as app, in_process(app) as client:
        answer = await client.get("/api/v1/incidents", headers=READ)
    assert answer.status_code == 503
    assert "no read model answers" in answer.json()["detail"]


# -- one incident ------------------------------------------------------------------------------


async def test_an_incident_with_its_report_and_sagas_from_the_stream(
    client: httpx.AsyncClient, model: ReadModel, js: JetStreamContext
) -> None:
    now = datetime.now(UTC)

    def at(data: object, minutes: float = 0) -> Event:
        return new_event(
            data, incident_id="inc-s", source="test", occurred_at=now + timedelta(minutes=minutes)
        )  # type: ignore[arg-type]

    second = RemediationAction(action="scale", params={"service": "api", "replicas": 3})
    last = await model.publish(
        opened("inc-s", 0),
        event(concluded(attempt=1, summary="first"), "inc-s", 1),
        event(concluded(attempt=2, service="db", summary="second"), "inc-s", 2),
        at(RemediationProposed(saga_id="s-wait", steps=[STEP], mode="approval", by="alice"), -1),
        at(
            RemediationProposed(
                saga_id="s-run", steps=[STEP, second], mode="approval", risk="medium"
            )
        ),
        at(RemediationApproved(saga_id="s-run", by="bob")),
        at(SagaStarted(saga_id="s-run", steps=[STEP, second])),
        at(SagaStepStarted(saga_id="s-run", step=0, action="restart", idempotency_key="k0")),
        at(SagaStepSucceeded(saga_id="s-run", step=0, action="restart")),
        at(RemediationProposed(saga_id="s-old", steps=[STEP], mode="approval"), -45),
    )
    answer = await client.get("/api/v1/incidents/inc-s", headers=READ)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["incident"]["incident_id"] == "inc-s"
    assert body["incident"]["root_cause_summary"] == "second"
    assert body["report_attempt"] == 2
    assert body["report"]["summary"] == "second"
    assert body["report"]["hypotheses"][0]["service"] == "db"
    assert body["last_seq"] == last
    sagas = {s["saga_id"]: s for s in body["sagas"]}
    assert list(sagas) == ["s-wait", "s-run", "s-old"]
    waiting = sagas["s-wait"]
    assert waiting["status"] == "awaiting_approval"
    assert waiting["proposed_by"] == "alice"
    expires = datetime.fromisoformat(waiting["expires_at"])
    assert expires == now + timedelta(minutes=-1 + 30)  # the default approval expiry
    assert sagas["s-run"] == {
        "saga_id": "s-run",
        "status": "running",
        "mode": "approval",
        "risk": "medium",
        "proposed_by": None,
        "rationale": None,
        "steps": [
            {"step": 0, "action": "restart", "params": {"service": "api"}, "status": "succeeded"},
            {"step": 1, "action": "scale", "params": {"service": "api", "replicas": 3},
             "status": "pending"},
        ],
        "expires_at": None,
    }  # fmt: skip
    assert sagas["s-old"]["expires_at"] is None  # proposed 45 minutes ago: expired
    assert body["awaiting_approval"] == ["s-wait"]
    assert len(await incident_events(js, "inc-s")) == 10


async def test_an_unknown_incident_is_404_and_a_bad_id_422(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/incidents/nope", "/api/v1/incidents/nope/events"):
        answer = await client.get(path, headers=READ)
        assert answer.status_code == 404
        assert answer.json() == {"detail": "no incident 'nope': the stream has no event of it"}
    bad = await client.get("/api/v1/incidents/a.b", headers=READ)
    assert bad.status_code == 422
    assert "incident_id" in str(bad.json()["detail"])  # and the pattern it must match
    assert "pattern" in str(bad.json()["detail"])
    assert (await client.get("/api/v1/incidents/*/events", headers=READ)).status_code == 422


async def test_an_incident_not_projected_yet_has_no_row(
    nc: NATS, js: JetStreamContext, db_path: Path
) -> None:
    """Its events are in the stream; the read model (answering, but not following) lacks it."""
    store = ProjectionStore(db_path)
    service = await serve_sql(nc, store.con, store.db_id)
    try:
        seq = (await EventPublisher(js).publish(opened("inc-x", 0))).seq
        async with api_app(nc) as app, in_process(app) as client:
            answer = await client.get("/api/v1/incidents/inc-x", headers=READ)
    finally:
        await service.stop()
        store.close()
    assert answer.json() == {
        "incident": None,
        "report": None,
        "report_attempt": None,
        "sagas": [],
        "awaiting_approval": [],
        "last_seq": seq,
    }


# -- its events --------------------------------------------------------------------------------


async def test_the_timeline_pages_by_sequence(
    client: httpx.AsyncClient, model: ReadModel, js: JetStreamContext
) -> None:
    await model.publish(opened("inc-t", 0), opened("inc-other", 0))
    await model.publish(*(event(concluded(attempt=n), "inc-t", n) for n in range(1, 6)))
    stored = await incident_events(js, "inc-t")
    first = await client.get("/api/v1/incidents/inc-t/events?limit=4", headers=READ)
    events = first.json()["events"]
    assert [e["seq"] for e in events] == [s.seq for s in stored[:4]]
    assert events[0] == orjson.loads(stored[0].event.to_json()) | {"seq": stored[0].seq}
    rest = await client.get(
        f"/api/v1/incidents/inc-t/events?after={events[-1]['seq']}", headers=READ
    )
    assert [e["seq"] for e in rest.json()["events"]] == [s.seq for s in stored[4:]]
    assert [e["type"] for e in rest.json()["events"]] == ["RootCauseConcluded"] * 2
    beyond = await client.get(f"/api/v1/incidents/inc-t/events?after={10**6}", headers=READ)
    assert beyond.json() == {"events": []}
    assert (
        await client.get("/api/v1/incidents/inc-t/events?after=-1", headers=READ)
    ).status_code == 422
