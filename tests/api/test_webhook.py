"""POST /webhooks/alertmanager against a real nats-server: auth, refusals, durability."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from nats.js import JetStreamContext

from api.app import create_app
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from tests.alertmanager.test_alert_events import PAYLOAD
from tests.eventlog.stream_reading import stream_events
from vigil.broker import EmbeddedNats

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(js: JetStreamContext) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process, publishing to the test's nats-server."""
    app = create_app(
        EventPublisher(js, ack_timeout=1.0), webhook_token=TOKEN, webhook_max_bytes=64_000
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as c:
        yield c


async def stored(js: JetStreamContext) -> int:
    return (await js.stream_info(EVENTS_STREAM)).state.messages


async def test_alerts_are_stored_before_the_2xx(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    answer = await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"alerts": 2, "stored": 2, "duplicates": 0}
    types = sorted(e.type for e in await stream_events(js))
    assert types == ["AnomalyDetected", "AnomalyResolved"]


async def test_the_same_notification_again_stores_nothing_new(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
    again = await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
    assert again.json() == {"alerts": 2, "stored": 0, "duplicates": 2}
    assert await stored(js) == 2


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "not bearer"],
)
async def test_no_token_no_entry(
    client: httpx.AsyncClient, js: JetStreamContext, headers: dict[str, str]
) -> None:
    answer = await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert await stored(js) == 0


async def test_without_a_configured_token_nobody_gets_in(js: JetStreamContext) -> None:
    app = create_app(EventPublisher(js), webhook_token=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v") as c:
        answer = await c.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
    assert answer.status_code == 401 and "VIGIL_WEBHOOK_TOKEN" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.update(version="3"), "version"),
        (lambda p: p["alerts"][1].update(status="pending"), "alerts.1.status"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "alerts.0.fingerprint"),
    ],
)
async def test_a_payload_that_does_not_fit_is_refused_whole(
    client: httpx.AsyncClient, js: JetStreamContext, change: object, field: str
) -> None:
    bad = copy.deepcopy(PAYLOAD)
    change(bad)  # type: ignore[operator]
    answer = await client.post("/webhooks/alertmanager", json=bad, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"{field}:")
    assert await stored(js) == 0  # not even the alert that was fine


async def test_not_json_is_a_4xx(client: httpx.AsyncClient) -> None:
    answer = await client.post("/webhooks/alertmanager", content=b"{nope", headers=AUTH)
    assert answer.status_code == 422


async def test_a_huge_payload_is_413(client: httpx.AsyncClient, js: JetStreamContext) -> None:
    huge = copy.deepcopy(PAYLOAD)
    huge["alerts"] = huge["alerts"] * 200
    answer = await client.post("/webhooks/alertmanager", content=orjson.dumps(huge), headers=AUTH)
    assert answer.status_code == 413 and "max_alerts" in answer.json()["detail"]
    assert await stored(js) == 0


async def test_broker_down_is_503_and_the_retry_stores_each_event_once(
    client: httpx.AsyncClient, js: JetStreamContext, nats_server: EmbeddedNats
) -> None:
    await nats_server.stop()
    down = await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
    assert down.status_code == 503 and "retry" in down.json()["detail"]
    await nats_server.start()
    for _ in range(30):  # Alertmanager's retries, until the client has reconnected
        answer = await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
        if answer.status_code == 200:
            break
        assert answer.status_code == 503
    assert answer.status_code == 200
    ids = [e.id for e in await stream_events(js)]
    assert len(ids) == 2 and len(set(ids)) == 2
