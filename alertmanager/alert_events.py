"""Alerts into events, with ids derived from the alert so a notification sent again is the
same event again (repeat_interval, retries, several Alertmanager replicas), however late."""

from __future__ import annotations

import hashlib
import uuid

from alertmanager.payload import WebhookAlert, WebhookPayload
from eventlog.envelope import Event, new_event
from eventlog.payloads import AnomalyDetected, AnomalyResolved

SOURCE = "alertmanager"
EVENT_NAMESPACE = uuid.UUID("5b0c6f0e-3f7a-4d8e-9a51-6a4f1c2d7e90")  # Vigil's alert events


def alert_key(alert: WebhookAlert) -> str:
    """What makes one firing of one alert: its series (fingerprint) and when it started."""
    return f"{alert.fingerprint}|{alert.starts_at.timestamp():.6f}"


def alert_id(alert: WebhookAlert, key: str | None = None) -> str:
    """`alert_key` short enough to be a key in records and ids."""
    return hashlib.sha256((key or alert_key(alert)).encode()).hexdigest()[:24]


def incident_id_for(alert: WebhookAlert, aid: str | None = None) -> str:
    """The incident an alert opens when nothing correlates it with another."""
    return "am-" + (aid or alert_id(alert))


def event_id_for(alert: WebhookAlert, key: str | None = None) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, f"{key or alert_key(alert)}|{alert.status}")


def alert_to_event(
    alert: WebhookAlert, payload: WebhookPayload, incident_id: str, event_id: uuid.UUID
) -> Event:
    """AnomalyDetected for a firing alert, AnomalyResolved for a resolved one."""
    data: AnomalyDetected | AnomalyResolved
    if alert.status == "firing":
        data = AnomalyDetected(
            origin="alertmanager",
            name=alert.name,
            fingerprint=alert.fingerprint,
            starts_at=alert.starts_at,
            labels=alert.labels,
            annotations=alert.annotations,
            service=alert.labels.get("service") or alert.labels.get("job"),
            severity=alert.labels.get("severity"),
            generator_url=alert.generator_url or None,
            group_key=payload.group_key,
        )
        at = alert.starts_at
    else:
        ends_at = alert.ends_at or alert.starts_at
        data = AnomalyResolved(
            origin="alertmanager",
            name=alert.name,
            fingerprint=alert.fingerprint,
            starts_at=alert.starts_at,
            ends_at=ends_at,
            labels=alert.labels,
        )
        at = ends_at
    # occurred_at comes from the alert too, so a re-sent alert is the same event byte for byte.
    return new_event(
        data, incident_id=incident_id, source=SOURCE, event_id=event_id, occurred_at=at
    )
