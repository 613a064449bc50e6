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


# PAYLOAD with both alerts firing: Vigil stores a resolution only of a firing it knows.
FIRING: dict[str, Any] = copy.deepcopy(PAYLOAD)
FIRING["alerts"][1] |= {"status": "firing", "endsAt": "0001-01-01T00:00:00Z"}


@contextlib.asynccontextmanager
async def api(
    js: JetStreamContext, token: str | None = TOKEN, **config: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process, publishing to the test's nats-server, with a fresh alert index
    (what a restarted Vigil has: only what KV holds)."""
    index = await AlertIndex.open(js)
    config = WebhookConfig(**{"token": token, "max_bytes": 64_000, "timeout": 1.0} | config)
    app = create_app(
        EventPublisher(js, ack_timeout=1.0), index, config, registry=CollectorRegistry()
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as c:
        yield c
    await index.close()  # as `vigil up` does when it stops


@pytest.fixture
async def client(js: JetStreamContext) -> AsyncIterator[httpx.AsyncClient]:
    async with api(js) as c:
        yield c


async def stored(js: JetStreamContext) -> int:
    return (await js.stream_info(EVENTS_STREAM)).state.messages


def answer_of(stored: int, duplicates: int = 0, stale: int = 0, alerts: int = 2) -> dict:
    return {"alerts": alerts, "stored": stored, "duplicates": duplicates, "stale": stale}


async def test_alerts_are_stored_before_the_2xx(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    answer = await client.post("/webhooks/alertmanager", json=FIRING, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == answer_of(stored=2)
    answer = await client.post("/webhooks/alertmanager", json=PAYLOAD, headers=AUTH)
    assert answer.json() == answer_of(stored=1, duplicates=1)
    types = sorted(e.type for e in await stream_events(js))
    assert types == ["AnomalyDetected", "AnomalyDetected", "AnomalyResolved"]


async def test_the_same_notification_again_stores_nothing_new(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await client.post("/webhooks/alertmanager", json=FIRING, headers=AUTH)
    again = await client.post("/webhooks/alertmanager", json=FIRING, headers=AUTH)
    assert again.json() == answer_of(stored=0, duplicates=2)
    assert await stored(js) == 2
    await client.post("/webhooks/alertmanager", json=FIRING)  # no token
    scrape = (await client.get("/metrics")).text
    assert 'vigil_webhook_alerts_total{outcome="stored"} 2.0' in scrape
    assert 'vigil_webhook_alerts_total{outcome="duplicate"} 2.0' in scrape
    assert 'vigil_webhook_requests_total{status="401"} 1.0' in scrape


async def test_the_same_alert_listed_twice_is_stored_once_and_counted(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    twice = {**FIRING, "alerts": [FIRING["alerts"][0]] * 2}
    answer = await client.post(URL, json=twice, headers=AUTH)
    assert answer.json() == answer_of(stored=1, duplicates=1)
    assert await stored(js) == 1
    scrape = (await client.get("/metrics")).text
    assert 'vigil_webhook_alerts_total{outcome="stored"} 1.0' in scrape


async def test_a_resolution_of_a_firing_never_seen_opens_no_incident(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    answer = await client.post(URL, json=PAYLOAD, headers=AUTH)
    assert answer.json() == answer_of(stored=1, stale=1)
    assert [e.type for e in await stream_events(js)] == ["AnomalyDetected"]
    scrape = (await client.get("/metrics")).text
    assert 'vigil_webhook_alerts_total{outcome="stale"} 1.0' in scrape


async def test_an_oversized_annotation_is_cut_and_stored_not_a_503_forever(
    js: JetStreamContext,
) -> None:
    """1.2 MB in one annotation, far under the body limit, but over NATS's 1 MB max_payload."""
    big = copy.deepcopy(FIRING)
    big["alerts"][0]["annotations"]["description"] = "x" * 1_200_000
    async with api(js, max_bytes=16_000_000) as c:
        answer = await c.post(URL, content=orjson.dumps(big), headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == answer_of(stored=2)
    cut = next(e for e in await stream_events(js) if e.data.fingerprint == "1a30ba71cca2921f")  # type: ignore[union-attr]
    assert cut.data.truncated == {"annotations.description": 1_200_000}  # type: ignore[union-attr]


async def test_an_alert_too_large_even_cut_is_refused_by_name_and_the_rest_stored(
    js: JetStreamContext,
) -> None:
    huge = copy.deepcopy(FIRING)
    huge["alerts"][1]["labels"] |= {f"l{i}": "v" * 300 for i in range(2000)}
    async with api(js, max_bytes=16_000_000, event_budget=64_000) as c:
        answer = await c.post(URL, content=orjson.dumps(huge), headers=AUTH)
        again = await c.post(URL, content=orjson.dumps(huge), headers=AUTH)
    assert answer.status_code == 422  # not 503: Alertmanager must not retry it for ever
    assert answer.json()["detail"].startswith("alerts.1 (fingerprint b2c3d4e5f6a7b8c9):")
    assert answer.json()["stored"] == 1 and again.json()["duplicates"] == 1
    assert await stored(js) == 1


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
    down = await client.post("/webhooks/alertmanager", json=FIRING, headers=AUTH)
    assert down.status_code == 503 and "retry" in down.json()["detail"]
    await nats_server.start()
    for _ in range(30):  # Alertmanager's retries, until the client has reconnected
        answer = await client.post("/webhooks/alertmanager", json=FIRING, headers=AUTH)
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
        assert (await first.post(URL, json=FIRING, headers=AUTH)).status_code == 200
    await asyncio.sleep(0.4)  # time itself is the condition: JetStream's window has passed
    async with api(js) as restarted:
        again = await restarted.post(URL, json=FIRING, headers=AUTH)
    assert again.json() == answer_of(stored=0, duplicates=2)
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
    assert answer.json() == answer_of(stored=1, duplicates=1)
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
