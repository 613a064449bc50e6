"""The demo shop as Prometheus and the demo see it: real HTTP on loopback, real metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vigil.shop import Shop, generate_traffic, running_shop


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    async with running_shop(seed=7) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def answers(client: httpx.AsyncClient, url: str, n: int) -> list[tuple[int, float]]:
    """`n` requests at once: (status code, seconds) of each."""

    async def one() -> tuple[int, float]:
        started = time.perf_counter()
        answer = await client.get(url)
        return answer.status_code, time.perf_counter() - started

    return await asyncio.gather(*(one() for _ in range(n)))


async def samples(client: httpx.AsyncClient, shop: Shop, service: str) -> dict[str, float]:
    """The service's /metrics as `name{label=value,...}` -> value."""
    text = (await client.get(shop.services[service].url + "/metrics")).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def test_a_healthy_shop_answers_and_counts_as_service_signals_reads_it(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    frontend = shop.services["frontend"].url
    assert {code for code, _ in await answers(client, frontend + "/buy", 20)} == {200}
    assert {code for code, _ in await answers(client, frontend + "/browse", 10)} == {200}
    # Each service counts its own requests under its own name; the buys reached payments.
    front = await samples(client, shop, "frontend")
    assert front["http_requests_total{code=200,service=frontend}"] == 30
    assert front["http_request_duration_seconds_count{service=frontend}"] == 30
    assert front["http_request_duration_seconds_bucket{le=+Inf,service=frontend}"] == 30
    assert front["shop_release{service=frontend,version=3.2.0}"] == 1
    payments = await samples(client, shop, "payments")
    assert payments["http_requests_total{code=200,service=payments}"] == 20
    search = await samples(client, shop, "search")
    assert search["http_requests_total{code=200,service=search}"] == 10


async def test_the_broken_release_fails_and_slows_and_its_failures_propagate(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    checkout = shop.services["checkout"].url
    answer = await client.post(checkout + "/admin/deploy", json={"version": "1.5.0"})
    assert answer.status_code == 200
    assert answer.json() == {"service": "checkout", "previous": "1.4.0", "now": "1.5.0"}
    assert (await client.get(checkout + "/admin/release")).json()["version"] == "1.5.0"

    told = await answers(client, checkout + "/", 100)
    codes = [code for code, _ in told]
    assert 20 <= codes.count(500) <= 60  # 40% of them, give or take chance
    assert set(codes) == {200, 500}
    assert min(seconds for _, seconds in told) >= 0.25  # its extra latency
    # The frontend answers 502 when checkout fails; browsing (search) is untouched.
    buys = [code for code, _ in await answers(client, shop.services["frontend"].url + "/buy", 50)]
    assert 502 in buys and set(buys) <= {200, 502}
    browses = await answers(client, shop.services["frontend"].url + "/browse", 20)
    assert {code for code, _ in browses} == {200}
    metrics = await samples(client, shop, "checkout")
    assert metrics["http_requests_total{code=500,service=checkout}"] == codes.count(
        500
    ) + buys.count(502)
    assert metrics["shop_release{service=checkout,version=1.5.0}"] == 1
    assert "shop_release{service=checkout,version=1.4.0}" not in metrics

    # Rolled back to the version it ran before: healthy again.
    answer = await client.post(checkout + "/admin/rollback")
    assert answer.json() == {"service": "checkout", "previous": "1.5.0", "now": "1.4.0"}
    assert {code for code, _ in await answers(client, checkout + "/", 30)} == {200}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"version": "9.9.9"}, "checkout has no release '9.9.9'; it has 1.4.0, 1.5.0, 1.5.1"),
        ({}, "version"),
        ({"version": ""}, "version"),
        ({"version": "1.5.0", "force": True}, "force"),
    ],
)
async def test_a_deploy_the_service_cannot_do_is_a_4xx_naming_the_problem(
    shop: Shop, client: httpx.AsyncClient, body: dict[str, object], problem: str
) -> None:
    checkout = shop.services["checkout"].url
    answer = await client.post(checkout + "/admin/deploy", json=body)
    assert answer.status_code == 422
    assert problem in answer.text
    assert (await client.get(checkout + "/admin/release")).json()["version"] == "1.4.0"
    answer = await client.post(checkout + "/admin/deploy", content=b"not json")
    assert answer.status_code == 422


async def test_the_traffic_generator_keeps_its_rate_and_stops(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    stop = asyncio.Event()
    traffic = asyncio.create_task(
        generate_traffic(shop.services["frontend"].url, stop, rate=50, seed=1)
    )
    await asyncio.sleep(1.0)  # the traffic's own pace is what is measured
    stop.set()
    await asyncio.wait_for(traffic, 10)
    front = await samples(client, shop, "frontend")
    served = front["http_request_duration_seconds_count{service=frontend}"]
    assert 20 <= served <= 60, served  # 50 at 50/s; a busy machine may lag
    search = await samples(client, shop, "search")
    payments = await samples(client, shop, "payments")
    assert search["http_requests_total{code=200,service=search}"] > 0
    assert payments["http_requests_total{code=200,service=payments}"] > 0


async def test_a_rollback_runs_the_version_before_the_current_one_until_there_is_none(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    search = shop.services["search"].url + "/admin"
    for version in ("0.9.1", "0.9.2"):
        assert (await client.post(search + "/deploy", json={"version": version})).status_code == 200
    answer = await client.post(search + "/rollback")
    assert answer.json() == {"service": "search", "previous": "0.9.2", "now": "0.9.1"}
    answer = await client.post(search + "/rollback", json={})
    assert answer.json() == {"service": "search", "previous": "0.9.1", "now": "0.9.0"}
    answer = await client.post(search + "/rollback")
    assert answer.status_code == 409
    assert answer.json() == {
        "detail": "search ran no version before 0.9.0: nothing to roll back to"
    }
    assert (await client.get(search + "/release")).json()["version"] == "0.9.0"
    metrics = await samples(client, shop, "search")
    assert [k for k in metrics if k.startswith("shop_release")] == [
        "shop_release{service=search,version=0.9.0}"
    ]
    assert (await client.post(search + "/rollback", json={"to": "0.9.2"})).status_code == 422


async def test_an_idempotency_key_sent_again_answers_the_first_answer_and_changes_nothing(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    checkout = shop.services["checkout"].url + "/admin"
    first = await client.post(
        checkout + "/deploy", json={"version": "1.5.0"}, headers={"Idempotency-Key": "k-1"}
    )
    assert first.json() == {"service": "checkout", "previous": "1.4.0", "now": "1.5.0"}
    again = await client.post(
        checkout + "/deploy", json={"version": "1.5.1"}, headers={"Idempotency-Key": "k-1"}
    )
    assert (again.status_code, again.json()) == (200, first.json())
    assert (await client.get(checkout + "/release")).json()["version"] == "1.5.0"

    # A rollback under its key happens once; the key's answer is replayed, by POST or GET.
    rollback = {"Idempotency-Key": "saga-1:0:1"}
    sent = [await client.post(checkout + "/rollback", headers=rollback) for _ in range(3)]
    assert [a.json() for a in sent] == [
        {"service": "checkout", "previous": "1.5.0", "now": "1.4.0"}
    ] * 3
    assert (await client.get(checkout + "/release")).json()["version"] == "1.4.0"
    replay = await client.get(checkout + "/requests/saga-1%3A0%3A1")
    assert (replay.status_code, replay.json()) == (200, sent[0].json())

    # A refusal is an answer too: replayed as it was, even once the change would succeed.
    refused = await client.post(checkout + "/rollback", headers={"Idempotency-Key": "k-2"})
    assert refused.status_code == 409
    await client.post(checkout + "/deploy", json={"version": "1.5.1"})
    again = await client.post(checkout + "/rollback", headers={"Idempotency-Key": "k-2"})
    assert (again.status_code, again.json()) == (409, refused.json())
    assert (await client.get(checkout + "/requests/k-2")).status_code == 409
    assert (await client.get(checkout + "/release")).json()["version"] == "1.5.1"

    # A key never sent; a body refused before it is read is not kept under its key.
    never = await client.get(checkout + "/requests/k-3")
    assert never.status_code == 404 and "no request with Idempotency-Key 'k-3'" in never.text
    bad = await client.post(checkout + "/deploy", json={}, headers={"Idempotency-Key": "k-3"})
    assert bad.status_code == 422
    assert (await client.get(checkout + "/requests/k-3")).status_code == 404


async def test_one_key_sent_at_once_many_times_makes_one_change(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    search = shop.services["search"].url + "/admin"
    await client.post(search + "/deploy", json={"version": "0.9.1"})
    await client.post(search + "/deploy", json={"version": "0.9.2"})
    told = await asyncio.gather(
        *(client.post(search + "/rollback", headers={"Idempotency-Key": "k"}) for _ in range(20))
    )
    assert {(a.status_code, a.json()["now"]) for a in told} == {(200, "0.9.1")}
    assert (await client.get(search + "/release")).json()["version"] == "0.9.1"


async def test_the_admin_gateway_reaches_each_services_own_admin_endpoints(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    """One address for every service (`/services/<name>/admin/...`): the same endpoints, the
    same state, the same keys as on the service's own address."""
    via = shop.admin_url + "/services/checkout/admin"
    answer = await client.post(via + "/deploy", json={"version": "1.5.0"},
                               headers={"Idempotency-Key": "k"})  # fmt: skip
    assert answer.json() == {"service": "checkout", "previous": "1.4.0", "now": "1.5.0"}
    own = shop.services["checkout"].url + "/admin"
    assert (await client.get(own + "/release")).json()["version"] == "1.5.0"
    assert (await client.get(own + "/requests/k")).json() == answer.json()
    assert (await client.post(via + "/rollback")).json()["now"] == "1.4.0"
    assert (await client.get(shop.admin_url + "/services/nowhere/admin/release")).status_code == 404
    assert (await client.get(shop.admin_url + "/services/search/admin/release")).json() == {
        "service": "search", "version": "0.9.0"
    }  # fmt: skip


async def test_a_bad_config_fails_a_service_and_no_deploy_or_rollback_undoes_it(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    """A dependency timeout shorter than its dependencies take: the frontend answers 502 while
    they answer 200. A config is not a release: deploying or rolling back keeps it."""
    frontend = shop.services["frontend"].url
    answer = await client.post(
        frontend + "/admin/config", json={"dependency_timeout_seconds": 0.001}
    )
    assert answer.json() == {"service": "frontend", "dependency_timeout_seconds": 0.001}
    assert {code for code, _ in await answers(client, frontend + "/buy", 20)} == {502}
    assert {code for code, _ in await answers(client, shop.services["checkout"].url, 20)} == {200}
    checkout = shop.services["checkout"].url + "/admin"
    await client.post(checkout + "/deploy", json={"version": "1.5.1"})
    await client.post(checkout + "/rollback")
    assert {code for code, _ in await answers(client, frontend + "/buy", 20)} == {502}
    config = (await client.get(frontend + "/admin/config")).json()
    assert config["dependency_timeout_seconds"] == 0.001
    await client.post(frontend + "/admin/config", json={"dependency_timeout_seconds": 2})
    assert {code for code, _ in await answers(client, frontend + "/buy", 20)} == {200}
    for wrong in ({"dependency_timeout_seconds": 0}, {"timeout": 1}, {}):
        assert (await client.post(frontend + "/admin/config", json=wrong)).status_code == 422
