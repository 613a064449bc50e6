"""Alerts into events, with ids derived from the alert so a notification sent again is the
same event again (repeat_interval, retries, several Alertmanager replicas), however late.

One firing of one alert (its fingerprint and `startsAt`) has a short life of events, each
named by a *label* that also derives its id: `firing`, then `resolved`; or, when it drops out
of its group's notifications (silenced, inhibited), `withdrawn.1`, and if it is listed again
`firing.1`, and so on.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

import orjson

from alertmanager.payload import WebhookAlert
from eventlog.envelope import Event, new_event
from eventlog.payloads import AnomalyDetected, AnomalyResolved, AnomalyWithdrawn

SOURCE = "alertmanager"
EVENT_NAMESPACE = uuid.UUID("5b0c6f0e-3f7a-4d8e-9a51-6a4f1c2d7e90")  # Vigil's alert events
# Most bytes one alert's event may take: far above real labels and annotations (a few KB),
# far below NATS's default max_payload (1 MB) so the envelope and headers always fit.
EVENT_BUDGET = 128 * 1024
MIN_KEPT = 256  # a cut text keeps at least this many bytes
CUT_MARK = " …[cut by Vigil]"
GROUP_KEY_KEPT = 4096  # characters of a group key a withdrawal carries


class AlertTooLarge(ValueError):
    """Even with every text cut, the alert's event does not fit in one NATS message."""


def alert_key(fingerprint: str, starts_at: datetime) -> str:
    """What makes one firing of one alert: its series (fingerprint) and when it started."""
    return f"{fingerprint}|{starts_at.timestamp():.6f}"


def alert_id(key: str) -> str:
    """`alert_key` short enough to be a key in records and ids."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def incident_id_for(aid: str) -> str:
    """The incident an alert opens when nothing correlates it with another."""
    return "am-" + aid


def event_id_for(key: str, label: str) -> uuid.UUID:
    """`label`: firing, resolved, withdrawn.N, firing.N (the first two as ids always were)."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{key}|{label}")


def firing_event(
    alert: WebhookAlert,
    group_key: str,
    incident_id: str,
    event_id: uuid.UUID,
    *,
    returned: bool = False,
    starts_at: datetime | None = None,
    budget: int = EVENT_BUDGET,
) -> Event:
    """AnomalyDetected for a firing alert; `returned` when it fires again after a withdrawal,
    `starts_at` when the alert at hand (a resolution) carries another than its firing's."""
    starts_at = starts_at or alert.starts_at
    texts: dict[str, Any] = {
        "labels": alert.labels,
        "annotations": alert.annotations,
        "generator_url": alert.generator_url or None,
        "group_key": group_key,
    }

    def build(fitted: dict[str, Any], truncated: dict[str, int]) -> Event:
        data = AnomalyDetected(
            origin="alertmanager",
            name=alert.name,
            fingerprint=alert.fingerprint,
            starts_at=starts_at,
            service=alert.labels.get("service") or alert.labels.get("job"),
            severity=alert.labels.get("severity"),
            returned=returned,
            truncated=truncated,
            **fitted,
        )
        # occurred_at comes from the alert, so a re-sent alert is the same event byte for byte.
        return new_event(data, incident_id=incident_id, source=SOURCE, event_id=event_id,
                         occurred_at=starts_at)  # fmt: skip

    return _fitting(build, texts, budget)


def resolved_event(
    alert: WebhookAlert,
    starts_at: datetime,
    incident_id: str,
    event_id: uuid.UUID,
    *,
    budget: int = EVENT_BUDGET,
) -> Event:
    """AnomalyResolved of the firing that started at `starts_at` (some senders rewrite an
    alert's `startsAt` on resolution; the event names the firing it ends)."""
    ends_at = max(alert.ends_at or alert.starts_at, starts_at)

    def build(fitted: dict[str, Any], truncated: dict[str, int]) -> Event:
        data = AnomalyResolved(
            origin="alertmanager",
            name=alert.name,
            fingerprint=alert.fingerprint,
            starts_at=starts_at,
            ends_at=ends_at,
            truncated=truncated,
            **fitted,
        )
        return new_event(data, incident_id=incident_id, source=SOURCE, event_id=event_id,
                         occurred_at=ends_at)  # fmt: skip

    return _fitting(build, {"labels": alert.labels}, budget)


def withdrawn_event(
    fingerprint: str,
    starts_at: datetime,
    group_key: str,
    incident_id: str,
    event_id: uuid.UUID,
    *,
    noticed_at: datetime,
) -> Event:
    """AnomalyWithdrawn, `noticed_at` (the notification that no longer listed it)."""
    data = AnomalyWithdrawn(
        origin="alertmanager",
        fingerprint=fingerprint,
        starts_at=starts_at,
        group_key=group_key[:GROUP_KEY_KEPT],  # the group's labels: no event past its budget
    )
    return new_event(data, incident_id=incident_id, source=SOURCE, event_id=event_id,
                     occurred_at=noticed_at)  # fmt: skip


def _fitting(build: Any, texts: dict[str, Any], budget: int) -> Event:
    """`build(texts, truncated)`, with the longest texts cut (largest first, each by just what
    is needed) until the event is at most `budget` bytes; AlertTooLarge if it cannot be."""
    if _surely_fits(texts, budget):  # nearly always: no serialising to measure it
        return build(texts, {})
    fitted = {k: dict(v) if isinstance(v, dict) else v for k, v in texts.items()}
    truncated: dict[str, int] = {}
    for _ in range(3):  # the first pass nearly always fits; JSON escapes can cost a second
        event = build(fitted, truncated)
        size = len(event.to_json())
        if size <= budget or not _cut(fitted, truncated, size - budget):
            break
    if size > budget:
        raise AlertTooLarge(
            f"its labels and annotations take {size} bytes even with each text cut "
            f"to {MIN_KEPT} bytes; one event may take {budget}"
        )
    return event


def _surely_fits(texts: dict[str, Any], budget: int) -> bool:
    """Even if every character became a six-byte JSON escape, the texts leave room for the
    rest of the event (its fixed fields take well under 2 KB)."""
    chars = 0
    for value in texts.values():
        if isinstance(value, dict):
            chars += sum(len(k) + len(v) for k, v in value.items())
        elif isinstance(value, str):
            chars += len(value)
    return 6 * chars + 4096 <= budget


def _cut(fitted: dict[str, Any], truncated: dict[str, int], excess: int) -> bool:
    """Cut the longest texts of `fitted` in place by `excess` bytes in all, noting each text's
    length before in `truncated`; False when nothing is left to cut."""
    places = [
        (field, name, value)
        for field, value in fitted.items()
        for name, value in (value.items() if isinstance(value, dict) else [(None, value)])
        if isinstance(value, str)
    ]
    cut_any = False
    for field, name, value in sorted(places, key=lambda p: -len(p[2])):
        raw = value.encode()
        keep = max(MIN_KEPT, len(raw) - excess - len(CUT_MARK.encode()))
        if keep >= len(raw) - len(CUT_MARK.encode()):
            break  # this and every shorter text are as short as they get
        where = field if name is None else f"{field}.{name}"
        truncated.setdefault(where, len(raw))
        cut = raw[:keep].decode(errors="ignore") + CUT_MARK
        # What the cut saves, less what its note in `truncated` costs.
        excess -= len(orjson.dumps(value)) - len(orjson.dumps(cut)) - len(where) - 16
        if name is None:
            fitted[field] = cut
        else:
            fitted[field][name] = cut
        cut_any = True
        if excess <= 0:
            break
    return cut_any
