"""A real Alertmanager 0.25 notifying a real `vigil up`: alerts posted to Alertmanager's own
API arrive as events and as `incidents` rows in DuckDB, resolutions and storms included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from vigil_cli_support import (
    EventWatch,
    StartUp,
    run_vigil,
    vigil_env,
    wait_projected,
    watch_events,
)

from eventlog.envelope import Event
from eventlog.stream import EVENTS_STREAM, connect
from tests.alertmanager.alertmanager_server import AlertmanagerServer, am_alert
from vigil.broker import EmbeddedNats
from vigil.runtime import Runtime

TOKEN = "a-token-only-alertmanager-knows"
DEADLINE = 20.0


@dataclass
class Pipeline:
    """Alertmanager -> `vigil up` -> JetStream -> DuckDB, and a watch on the stream."""

    data: Path
    runtime: Runtime
    am: AlertmanagerServer
    watch: EventWatch
    nc: NATS

    async def projected(self) -> None:
        """Wait until DuckDB holds every event appended so far."""
        info = await self.nc.jetstream().stream_info(EVENTS_STREAM)
        await wait_projected(self.runtime, info.state.last_seq)


@pytest.fixture
async def pipeline(vigil_up: StartUp, tmp_path: Path) -> AsyncIterator[Pipeline]:
    data = tmp_path / "vigil"
    up = await vigil_up(data, webhook_token=TOKEN)
    runtime = await up.up()
    nc = await connect(runtime.nats_url, name="vigil-test-watch")
    watch = await watch_events(nc)
    am = AlertmanagerServer(tmp_path / "alertmanager", up.http_url(), TOKEN)
    am.start()
    try:
        yield Pipeline(data, runtime, am, watch, nc)
    finally:
        am.stop()
        await nc.close()


async def incidents_of(data: Path) -> list[dict[str, object]]:
    done = await run_vigil(
        "sql",
        "SELECT service, title, list_sort(firing) AS firing, anomalies FROM incidents "
        "ORDER BY service, title",
        "--format",
        "json",
        env=vigil_env(data),
    )
    assert done.rc == 0, done
    return json.loads(done.out)


async def test_alerts_and_their_resolution_become_events_and_incidents(
    pipeline: Pipeline,
) -> None:
    am, watch = pipeline.am, pipeline.watch
    now = datetime.now(UTC).replace(microsecond=0)
    firing = [
        am_alert("HighLatency", now, service="checkout", instance="a"),
        am_alert("HighLatency", now, service="checkout", instance="b"),
        am_alert("DiskFull", now, service="db", instance="db1"),
    ]
    await am.post_alerts(firing)
    await watch.until(lambda _: len(watch.of_type("AnomalyDetected")) == 3, "3 alerts")
    # Prometheus resolves an alert by sending it with an endsAt that has passed.
    ended = now + timedelta(seconds=1)
    await am.post_alerts([am_alert("DiskFull", now, ended, service="db", instance="db1")])
    await watch.until(lambda _: len(watch.of_type("AnomalyResolved")) == 1, "resolution")
    await pipeline.projected()

    detected = watch.of_type("AnomalyDetected")
    assert {e.data.labels["instance"] for e in detected} == {"a", "b", "db1"}  # type: ignore[union-attr]
    assert all(e.data.origin == "alertmanager" for e in detected)  # type: ignore[union-attr]
    (resolved,) = watch.of_type("AnomalyResolved")
    disk = next(e for e in detected if e.data.labels["instance"] == "db1")  # type: ignore[union-attr]
    assert resolved.incident_id == disk.incident_id
    rows = await incidents_of(pipeline.data)
    checkout = sorted(e.data.fingerprint for e in detected if e.data.service == "checkout")  # type: ignore[union-attr]
    assert rows == [
        {"service": "checkout", "title": "HighLatency", "firing": checkout, "anomalies": 2},
        {"service": "db", "title": "DiskFull", "firing": [], "anomalies": 1},
    ]


async def test_an_alert_storm_opens_a_handful_of_incidents(pipeline: Pipeline) -> None:
    """300 alerts of 3 alert names on 2 services: Alertmanager notifies 6 groups, several
    times each as they fill; Vigil stores each alert once and opens one incident per service."""
    am, watch = pipeline.am, pipeline.watch
    alerts = storm(datetime.now(UTC).replace(microsecond=0))
    for wave in range(3):  # in waves, so groups are notified again with more alerts
        await am.post_alerts(alerts[wave * 100 : (wave + 1) * 100])
    detected = lambda: watch.of_type("AnomalyDetected")  # noqa: E731
    await watch.until(lambda _: len(detected()) >= 300, "300 alerts")
    # Each incident is investigated once, however many of its alerts come and when.
    await watch.until(lambda _: len(watch.of_type("RootCauseConcluded")) >= 2, "2 reports")
    await pipeline.projected()
    assert len(detected()) == 300 and len({e.id for e in detected()}) == 300
    rows = await incidents_of(pipeline.data)
    assert [(r["service"], r["anomalies"]) for r in rows] == [("cart", 150), ("checkout", 150)]
    for kind in ("InvestigationStarted", "RootCauseConcluded"):
        assert sorted(e.incident_id for e in watch.of_type(kind)) == sorted(
            {e.incident_id for e in detected()}
        )


def storm(now: datetime) -> list[dict[str, object]]:
    """300 alerts of 3 alert names on 2 services: 6 groups of 50, one incident per service."""
    names = ("HighLatency", "ErrorBudgetBurn", "PodRestarting")
    return [
        am_alert(
            names[i % 3],
            now + timedelta(seconds=i // 10),
            service=("checkout", "cart")[i % 2],
            pod=f"p{i}",
        )
        for i in range(300)
    ]


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(url.replace("/webhooks/alertmanager", "/metrics"))).text


@pytest.mark.slow
async def test_two_replicas_behind_one_alertmanager_open_one_incident_per_service(
    vigil_up: StartUp, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Two `vigil up` on one NATS (one alert index): the groups of one service go to either
    replica, and one alert name's groups to both at once; their decisions meet in the KV
    bucket, so each service is still one incident and each alert one event."""
    ups = [
        await vigil_up(tmp_path / name, webhook_token=TOKEN, nats_url=nats_server.url)
        for name in ("a", "b")
    ]
    runtimes = [await up.up() for up in ups]
    a, b = (up.http_url() for up in ups)
    am = AlertmanagerServer(
        tmp_path / "alertmanager", a, TOKEN,
        routes={"ErrorBudgetBurn": [b], "PodRestarting": [a, b]},
    )  # fmt: skip
    am.start()
    nc = await connect(nats_server.url, name="vigil-test-watch")
    try:
        watch = await watch_events(nc)
        alerts = storm(datetime.now(UTC).replace(microsecond=0))
        for wave in range(3):  # in waves, so groups are notified again with more alerts
            await am.post_alerts(alerts[wave * 100 : (wave + 1) * 100])
        await watch.until(lambda _: len(watch.of_type("AnomalyDetected")) >= 300, "300 alerts")
        # Two responders on one stream: each incident investigated once.
        await watch.until(lambda _: len(watch.of_type("RootCauseConcluded")) >= 2, "2 reports")
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        await wait_projected(runtimes[0], info.state.last_seq)
    finally:
        am.stop()
        await nc.close()
    detected = watch.of_type("AnomalyDetected")
    assert len(detected) == 300 and len({e.id for e in detected}) == 300
    assert len(watch.of_type("InvestigationStarted")) == 2
    assert len(watch.of_type("RootCauseConcluded")) == 2
    incidents: dict[str, set[str]] = {}
    for e in detected:
        incidents.setdefault(e.data.service, set()).add(e.incident_id)  # type: ignore[union-attr]
    assert {s: len(i) for s, i in incidents.items()} == {"checkout": 1, "cart": 1}
    rows = await incidents_of(ups[0].data_dir)
    assert [(r["service"], r["anomalies"]) for r in rows] == [("cart", 150), ("checkout", 150)]
    for url in (a, b):  # each replica took notifications
        assert 'vigil_webhook_requests_total{status="200"}' in await scrape(url)


async def test_a_silenced_alert_leaves_the_firing_state_and_returns_when_it_ends(
    pipeline: Pipeline,
) -> None:
    """Alertmanager stops listing a silenced alert in its group's notifications: Vigil's read
    model must stop showing it firing (AnomalyWithdrawn), and show it again when the silence
    ends and the alert is listed again (AnomalyDetected, returned)."""
    am, watch = pipeline.am, pipeline.watch
    now = datetime.now(UTC).replace(microsecond=0)
    x, y, z = (am_alert("Down", now, service="api", instance=i) for i in "xyz")
    await am.post_alerts([x, y])
    await watch.until(lambda _: len(watch.of_type("AnomalyDetected")) == 2, "x and y firing")
    silence = await am.silence({"instance": "x"}, now + timedelta(hours=1))
    # Alertmanager notifies a group again when something new fires in it, not when an
    # alert is silenced: z is what makes it send the group without x.
    await am.post_alerts([z])
    await watch.until(lambda _: len(watch.of_type("AnomalyWithdrawn")) == 1, "x withdrawn")
    await am.expire_silence(silence)
    await watch.until(lambda _: len(watch.of_type("AnomalyDetected")) == 4, "x listed again")
    ended = now + timedelta(seconds=1)
    await am.post_alerts([am_alert("Down", now, ended, service="api", instance="y")])
    await watch.until(lambda _: len(watch.of_type("AnomalyResolved")) == 1, "y resolved")
    await pipeline.projected()

    def instance(e: Event) -> str:
        return e.data.labels["instance"]  # type: ignore[union-attr]

    (withdrawn,) = watch.of_type("AnomalyWithdrawn")
    returned = [e for e in watch.of_type("AnomalyDetected") if e.data.returned]  # type: ignore[union-attr]
    assert [instance(e) for e in returned] == ["x"]
    x_fired = next(e for e in watch.of_type("AnomalyDetected") if instance(e) == "x")
    assert withdrawn.data.fingerprint == x_fired.data.fingerprint  # type: ignore[union-attr]
    fingerprint = {instance(e): e.data.fingerprint for e in watch.of_type("AnomalyDetected")}  # type: ignore[union-attr]
    assert await incidents_of(pipeline.data) == [
        {"service": "api", "title": "Down", "anomalies": 3,
         "firing": sorted([fingerprint["x"], fingerprint["z"]])},
    ]  # fmt: skip
