"""Anomalies on the stream around one moment NOW, each firing or not at NOW for its own
reason: what `service_topology` and `related_alerts` call alerting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from eventlog.envelope import Event, new_event
from eventlog.payloads import AnomalyDetected, AnomalyResolved, AnomalyWithdrawn, Payload
from eventlog.publisher import EventPublisher

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIRING = {"c1", "p1", "d2", "f1", "g1"}  # the fingerprints firing at NOW


def minutes(n: float) -> datetime:
    return NOW + timedelta(minutes=n)


def detected(fingerprint: str, name: str, service: str | None, starts: float,
             severity: str = "warning", returned: bool = False) -> AnomalyDetected:  # fmt: skip
    return AnomalyDetected(origin="alertmanager", name=name, fingerprint=fingerprint,
                           starts_at=minutes(starts), service=service, severity=severity,
                           labels={"alertname": name}, returned=returned)  # fmt: skip


def story() -> list[tuple[Payload, str, float]]:
    """(fact, incident, when it was recorded: minutes from NOW)."""
    return [
        (detected("c1", "CheckoutErrors", "checkout", -5, "critical"), "inc-c", -5),
        (detected("p1", "PaymentsErrors", "payments", -10), "inc-p", -10),
        # ended five minutes ago
        (detected("i1", "InventorySlow", "inventory", -20), "inc-i", -20),
        (AnomalyResolved(origin="alertmanager", name="InventorySlow", fingerprint="i1",
                         starts_at=minutes(-20), ends_at=minutes(-5)), "inc-i", -4),
        # silenced a quarter of an hour ago
        (detected("d1", "DiskFull", "db", -30), "inc-d", -30),
        (AnomalyWithdrawn(origin="alertmanager", fingerprint="d1", starts_at=minutes(-30)),
         "inc-d", -15),
        # silenced, then listed again: firing
        (detected("d2", "ConnErrors", "db", -30), "inc-d", -30),
        (AnomalyWithdrawn(origin="alertmanager", fingerprint="d2", starts_at=minutes(-30)),
         "inc-d", -20),
        (detected("d2", "ConnErrors", "db", -30, returned=True), "inc-d", -10),
        # ends after NOW (an evaluation at a past NOW): firing at NOW
        (detected("f1", "FrontendSlow", "frontend", -40), "inc-f", -40),
        (AnomalyResolved(origin="alertmanager", name="FrontendSlow", fingerprint="f1",
                         starts_at=minutes(-40), ends_at=minutes(10)), "inc-f", 11),
        # starts after NOW
        (detected("w1", "MobileDown", "mobile", 5), "inc-m", 5),
        # withdrawn only after NOW: firing at NOW
        (detected("g1", "GhostAlert", "ghost", -50), "inc-g", -50),
        (AnomalyWithdrawn(origin="alertmanager", fingerprint="g1", starts_at=minutes(-50)),
         "inc-g", 3),
    ]  # fmt: skip


async def publish_story(js: JetStreamContext) -> list[Event]:
    events = [new_event(fact, incident_id=incident, source="test", occurred_at=minutes(at))
              for fact, incident, at in story()]  # fmt: skip
    await EventPublisher(js).publish_many(events)
    return events
