"""A real Alertmanager 0.25 notifying a real `vigil up`: alerts posted to Alertmanager's own
API arrive as events and as `incidents` rows in DuckDB, resolutions and storms included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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

from eventlog.stream import EVENTS_STREAM, connect
from tests.alertmanager.alertmanager_server import AlertmanagerServer, am_alert
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


async def incidents(data: Path) -> list[dict[str, object]]:
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
    rows = await incidents(pipeline.data)
    checkout = sorted(e.data.fingerprint for e in detected if e.data.service == "checkout")  # type: ignore[union-attr]
    assert rows == [
        {"service": "checkout", "title": "HighLatency", "firing": checkout, "anomalies": 2},
        {"service": "db", "title": "DiskFull", "firing": [], "anomalies": 1},
    ]


async def test_an_alert_storm_opens_a_handful_of_incidents(pipeline: Pipeline) -> None:
    """300 alerts of 3 alert names on 2 services: Alertmanager notifies 6 groups, several
    times each as they fill; Vigil stores each alert once and opens one incident per service."""
    am, watch = pipeline.am, pipeline.watch
    now = datetime.now(UTC).replace(microsecond=0)
    names = ("HighLatency", "ErrorBudgetBurn", "PodRestarting")
    storm = [
        am_alert(
            names[i % 3],
            now + timedelta(seconds=i // 10),
            service=("checkout", "cart")[i % 2],
            pod=f"p{i}",
        )
        for i in range(300)
    ]
    for wave in range(3):  # in waves, so groups are notified again with more alerts
        await am.post_alerts(storm[wave * 100 : (wave + 1) * 100])
    await watch.until(lambda _: len(watch.events) >= 300, "300 alerts")
    await pipeline.projected()
    assert len(watch.events) == 300 and len({e.id for e in watch.events}) == 300
    rows = await incidents(pipeline.data)
    assert [(r["service"], r["anomalies"]) for r in rows] == [("cart", 150), ("checkout", 150)]
