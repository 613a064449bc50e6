"""related_alerts on a real Alertmanager (Debian's 0.25) and a real nats-server: its active
alerts and the anomalies Vigil holds, merged, by service, nearest the onset first."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from eventlog.envelope import new_event
from eventlog.payloads import AnomalyDetected, AnomalyResolved
from eventlog.publisher import EventPublisher
from responder.tools.alerts import RelatedAlertsArgs, related_alerts
from tests.alertmanager.alertmanager_server import AlertmanagerServer, am_alert
from tests.daemons import free_port
from tests.responder.contexts import tool_context

# Alertmanager knows only the real present: the investigation's now is just before it, so an
# alert that started in between must be left out.
REAL = datetime.now(UTC).replace(microsecond=0)
NOW = REAL - timedelta(minutes=2)
ONSET = REAL - timedelta(minutes=10)


def ago(minutes: float) -> datetime:
    return REAL - timedelta(minutes=minutes)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[AlertmanagerServer]:
    """Alertmanager routing to a webhook nobody serves (its notifications are not the point)."""
    server = AlertmanagerServer(tmp_path / "am", f"http://127.0.0.1:{free_port()}/hook", "t")
    server.start()
    yield server
    server.stop()


async def fingerprint_of(am: AlertmanagerServer, name: str) -> str:
    async with httpx.AsyncClient(base_url=am.url) as client:
        alerts = (await client.get("/api/v2/alerts")).json()
    return next(a["fingerprint"] for a in alerts if a["labels"]["alertname"] == name)


async def plant(am: AlertmanagerServer, js: JetStreamContext) -> None:
    await am.post_alerts([
        am_alert("CheckoutErrors", ago(12), service="checkout", severity="critical"),
        am_alert("PaymentsLatency", ago(7), service="payments", severity="warning"),
        am_alert("JobDown", ago(30), job="worker"),  # no service label: the job names it
        am_alert("Muted", ago(9), service="payments", instance="m"),
        am_alert("TooLate", ago(1), service="checkout"),  # started after the investigation's now
        am_alert("Over", ago(40), ago(20), service="checkout"),  # resolved
    ])  # fmt: skip
    await am.silence({"alertname": "Muted"}, REAL + timedelta(hours=1))
    # What Vigil's webhook recorded of CheckoutErrors, and what its own detector found.
    checkout = await fingerprint_of(am, "CheckoutErrors")
    facts = [
        AnomalyDetected(origin="alertmanager", name="CheckoutErrors", fingerprint=checkout,
                        starts_at=ago(12), service="checkout", severity="critical"),
        AnomalyDetected(origin="detector", name="LatencyZ", fingerprint="det-1",
                        starts_at=ago(11), service="checkout", severity="warning"),
        AnomalyDetected(origin="detector", name="Gone", fingerprint="det-2", starts_at=ago(50),
                        service="checkout"),
        AnomalyResolved(origin="detector", name="Gone", fingerprint="det-2", starts_at=ago(50),
                        ends_at=ago(45)),
    ]  # fmt: skip
    await EventPublisher(js).publish_many(
        [new_event(f, incident_id="inc-7", source="test", occurred_at=ago(10)) for f in facts]
    )


async def related(nc: NATS, url: str | None, **args: Any) -> dict[str, Any]:
    ctx = tool_context(nc, NOW, onset=ONSET, alertmanager_url=url)
    return await related_alerts(ctx, RelatedAlertsArgs(**args))


def told(name: str, minutes_after_onset: float, sources: list[str], incident: str | None = None,
         severity: str | None = "warning", started: float = 0) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "severity": severity, "starts_at": ago(started).isoformat(),
            "incident_id": incident, "minutes_after_onset": minutes_after_onset,
            "sources": sources}  # fmt: skip


async def test_firing_by_service_nearest_the_onset_first(
    js: JetStreamContext, nc: NATS, alertmanager: AlertmanagerServer
) -> None:
    await plant(alertmanager, js)
    result = await related(nc, alertmanager.url)
    assert result["groups"] == [
        {"service": "checkout", "alerts": [
            told("LatencyZ", -1.0, ["vigil"], "inc-7", started=11),
            told("CheckoutErrors", -2.0, ["vigil", "alertmanager"], "inc-7", "critical", 12),
        ]},
        {"service": "payments", "alerts": [told("PaymentsLatency", 3.0, ["alertmanager"],
                                                started=7)]},
        {"service": "worker", "alerts": [told("JobDown", -20.0, ["alertmanager"], None, None,
                                              30)]},
    ]  # fmt: skip
    assert (result["total"], result["shown"]) == (4, 4)
    assert result["at"] == NOW.isoformat() and result["onset"] == ONSET.isoformat()
    assert "alertmanager_error" not in result


async def test_one_service_and_a_limit(
    js: JetStreamContext, nc: NATS, alertmanager: AlertmanagerServer
) -> None:
    await plant(alertmanager, js)
    payments = await related(nc, alertmanager.url, service="payments")
    assert [g["service"] for g in payments["groups"]] == ["payments"]
    assert [a["name"] for a in payments["groups"][0]["alerts"]] == ["PaymentsLatency"]
    nearest = await related(nc, alertmanager.url, limit=2)
    assert [a["name"] for g in nearest["groups"] for a in g["alerts"]] == [
        "LatencyZ", "CheckoutErrors"
    ]  # fmt: skip
    assert (nearest["total"], nearest["shown"]) == (4, 2)


async def test_alertmanager_down_still_tells_vigils_own(
    js: JetStreamContext, nc: NATS, alertmanager: AlertmanagerServer
) -> None:
    await plant(alertmanager, js)
    alertmanager.stop()
    result = await related(nc, alertmanager.url)
    assert result["alertmanager_error"].startswith("Alertmanager unreachable: ConnectError")
    assert [a["name"] for g in result["groups"] for a in g["alerts"]] == [
        "LatencyZ", "CheckoutErrors"
    ]  # fmt: skip
    assert result["groups"][0]["alerts"][1]["sources"] == ["vigil"]
    unset = await related(nc, None)  # not configured: no error, Vigil's own
    assert "alertmanager_error" not in unset and unset["total"] == 2
