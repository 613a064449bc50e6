"""POST /webhooks/alertmanager against a real nats-server: auth, refusals, durability."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from alertmanager.alert_index import AlertIndex
from api.app import WebhookConfig, create_app
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM, ensure_streams
from tests.alertmanager.test_alert_events import PAYLOAD, json_values
from tests.eventlog.stream_reading import stream_events
from vigil.broker import EmbeddedNats

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "/webhooks/alertmanager"


@contextlib.asynccontextmanager
async def api(js: JetStreamContext, token: str | None = TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process, publishing to the test's nats-server, with a fresh alert index
    (what a restarted Vigil has: only what KV holds)."""
    index = await AlertIndex.open(js)
    config = WebhookConfig(token=token, max_bytes=64_000, timeout=1.0)
    app = create_app(
        EventPublisher(js, ack_timeout=1.0), index, config, registry=CollectorRegistry()
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as c:
        yield c


@pytest.fixture
async def client(js: JetStreamContext) -> AsyncIterator[httpx.AsyncClient]:
    async with api(js) as c:
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
    await client.post("/webhooks/alertmanager", json=PAYLOAD)  # no token
    scrape = (await client.get("/metrics")).text
    assert 'vigil_webhook_alerts_total{outcome="stored"} 2.0' in scrape
    assert 'vigil_webhook_alerts_total{outcome="duplicate"} 2.0' in scrape
    assert 'vigil_webhook_requests_total{status="401"} 1.0' in scrape


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
    async with api(js, token=None) as c:
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


async def test_a_repeat_beyond_jetstreams_duplicate_window_is_still_a_duplicate(
    js: JetStreamContext,
) -> None:
    """repeat_interval (4h by default) is far past JetStream's window: the alert index,
    read back from KV by a restarted Vigil, is what knows the events are stored."""
    await ensure_streams(js, duplicate_window=0.2)
    async with api(js) as first:
        assert (await first.post(URL, json=PAYLOAD, headers=AUTH)).status_code == 200
    await asyncio.sleep(0.4)  # time itself is the condition: JetStream's window has passed
    async with api(js) as restarted:
        again = await restarted.post(URL, json=PAYLOAD, headers=AUTH)
    assert again.json() == {"alerts": 2, "stored": 0, "duplicates": 2}
    assert await stored(js) == 2


async def test_a_group_keeps_its_incident_across_notifications_and_a_restart(
    js: JetStreamContext,
) -> None:
    first = {**PAYLOAD, "alerts": PAYLOAD["alerts"][:1]}
    later_alert = {**PAYLOAD["alerts"][0], "fingerprint": "c0ffee", "labels": {"alertname": "X"}}
    later = {**PAYLOAD, "alerts": [PAYLOAD["alerts"][0], later_alert]}
    async with api(js) as c:
        await c.post(URL, json=first, headers=AUTH)
    async with api(js) as c:
        answer = await c.post(URL, json=later, headers=AUTH)
    assert answer.json() == {"alerts": 2, "stored": 1, "duplicates": 1}
    events = await stream_events(js)
    assert len(events) == 2 and events[0].incident_id == events[1].incident_id


async def test_one_service_joins_one_incident_across_groups_and_a_restart(
    js: JetStreamContext,
) -> None:
    firing = PAYLOAD["alerts"][0]  # service "checkout"
    other = {**firing, "fingerprint": "0ther", "labels": {**firing["labels"], "alertname": "5xx"}}
    async with api(js) as c:
        await c.post(URL, json={**PAYLOAD, "alerts": [firing]}, headers=AUTH)
    async with api(js) as c:  # restarted: the service's record comes back from KV
        await c.post(URL, json={**PAYLOAD, "groupKey": "{}:{alertname=5xx}", "alerts": [other]},
                     headers=AUTH)  # fmt: skip
    first, second = await stream_events(js)
    assert first.incident_id == second.incident_id


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=json_values
    | st.dictionaries(st.text(), json_values, max_size=6).map(lambda d: {**PAYLOAD, **d})
)
async def test_arbitrary_json_is_never_a_500(client: httpx.AsyncClient, body: Any) -> None:
    """Whatever JSON arrives, the answer is 2xx (it was a payload) or a 4xx naming why."""
    answer = await client.post(
        URL, content=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), headers=AUTH
    )
    assert answer.status_code in (200, 413, 422), answer.text
    assert answer.status_code == 200 or answer.json()["detail"]
