"""`vigil up` with VIGIL_PROMETHEUS_URL runs the detector on the wall clock against a real
Prometheus whose recent history (backfilled by promtool) has a disk past its threshold."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from vigil_cli_support import StartUp, watch_events

from eventlog.payloads import AnomalyDetected
from eventlog.stream import connect
from tests.detector.prometheus_server import PrometheusServer, openmetrics

RULES = """
rules:
  - name: disk-nearly-full
    query: disk_used_ratio
    labels: {severity: critical}
    interval: 1s
    for_polls: 2
    detector: {kind: threshold, threshold: 0.9, direction: above}
"""


async def test_up_detects_what_prometheus_shows_now(vigil_up: StartUp, tmp_path: Path) -> None:
    now = int(time.time())
    recent = [(t, 0.97) for t in range(now - 1800, now - 20, 20)]
    prometheus = PrometheusServer(tmp_path / "prometheus")
    prometheus.backfill(openmetrics([("disk_used_ratio", {"service": "db"}, recent)]))
    prometheus.start()
    try:
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES)
        up = await vigil_up(
            tmp_path / "data", prometheus_url=prometheus.url, rules=str(rules), webhook_token="t"
        )
        runtime = await up.up()
        assert any(line.startswith("Rules  1 from") for line in up.lines), up.lines
        nc = await connect(runtime.nats_url, name="vigil-test-watch")
        watch = await watch_events(nc)
        try:
            await watch.until(
                lambda e: bool(watch.of_type("AnomalyDetected")), f"a detection ({up.stderr})"
            )
        finally:
            await nc.close()
        (detected,) = watch.of_type("AnomalyDetected")
        assert isinstance(detected.data, AnomalyDetected)
        assert detected.data.origin == "detector" and detected.data.name == "disk-nearly-full"
        assert detected.data.service == "db" and detected.data.value == pytest.approx(0.97)
        async with httpx.AsyncClient() as client:
            scrape = (
                await client.get(up.http_url().replace("/webhooks/alertmanager", "/metrics"))
            ).text
        assert (
            'vigil_detector_events_total{rule="disk-nearly-full",type="AnomalyDetected"} 1.0'
            in scrape
        )
    finally:
        prometheus.stop()
