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
    assert answer.json() == {"service": "checkout", "version": "1.5.0"}
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

    # Rolling back is deploying the old version: healthy again.
    answer = await client.post(checkout + "/admin/deploy", json={"version": "1.4.0"})
    assert answer.status_code == 200
    assert {code for code, _ in await answers(client, checkout + "/", 30)} == {200}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"version": "9.9.9"}, "checkout has no release '9.9.9'; it has 1.4.0, 1.5.0"),
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
