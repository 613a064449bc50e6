"""Which incident each alert joins, and which of its events are new: pure, so it is testable.

An alert joins, in this order: the incident it already belongs to (a re-sent or resolved
alert); its group's incident while the group has alerts firing or fired within the window;
the incident of its service when an alert of that service fired within the window; else a
new incident whose id is derived from the alert (so two Vigil replicas handling the same
notification open the same one). Windows are measured between alerts' `startsAt`, not the
wall clock, so the answer does not depend on when the notification arrives.

What was seen is remembered per group (`GroupMemory`, one record per `groupKey`) and per
service (`ServiceMemory`); `alertmanager.alert_index` keeps both in JetStream KV.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field

from alertmanager.alert_events import (
    alert_id,
    alert_key,
    alert_to_event,
    event_id_for,
    incident_id_for,
)
from alertmanager.payload import WebhookAlert, WebhookPayload
from eventlog.envelope import Event

Status = Literal["firing", "resolved"]
# A resolved alert is forgotten this long after it ended: Alertmanager stops sending it
# much sooner (its alerts.gc-interval), so a late copy is still known as a duplicate.
FORGET_RESOLVED_AFTER = timedelta(days=1)


class AlertMemory(BaseModel):
    """One firing of one alert: its incident and which of its events are stored."""

    incident_id: str
    stored: list[Status] = Field(default_factory=list)
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None


class GroupMemory(BaseModel):
    """One Alertmanager group (`groupKey`): its current incident and its alerts."""

    incident_id: str | None = None
    last_fired_at: AwareDatetime | None = None
    alerts: dict[str, AlertMemory] = Field(default_factory=dict)

    def firing(self) -> bool:
        """Some alert of the group has not been seen resolved (webhooks send resolved alerts
        unless `send_resolved: false`, which Vigil needs left on)."""
        return any(a.ends_at is None for a in self.alerts.values())


class ServiceMemory(BaseModel):
    """The incident of a service's most recent alert, and when that alert started."""

    incident_id: str
    last_fired_at: AwareDatetime


def memory_key(kind: Literal["g", "s"], value: str) -> str:
    """A KV key (only [-_=.a-zA-Z0-9] allowed) naming a group or a service."""
    return f"{kind}.{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def service_of(alert: WebhookAlert) -> str | None:
    return alert.labels.get("service") or alert.labels.get("job")


@dataclass
class Plan:
    """What one notification changes: events to store, and the memories once they are."""

    events: list[Event]
    duplicates: int
    group: GroupMemory
    services: dict[str, ServiceMemory]
    # (event id, alert id, status) of each event, to mark stored once JetStream acked it.
    marks: list[tuple[uuid.UUID, str, Status]] = field(default_factory=list)

    def mark_stored(self, acked: Container[uuid.UUID] | None = None) -> None:
        """Every event stored, or only those `acked` (the rest of a failed publish)."""
        for event_id, aid, status in self.marks:
            memory = self.group.alerts.get(aid)  # a concurrent request may have forgotten it
            if memory is None or (acked is not None and event_id not in acked):
                continue
            if status not in memory.stored:
                memory.stored.append(status)


def correlate(
    payload: WebhookPayload,
    group: GroupMemory,
    services: dict[str, ServiceMemory],
    window: timedelta,
) -> Plan:
    """Assign each alert an incident and pick the events not stored yet.

    `group` and `services` are updated in place with the assignments (not with what is
    stored: `Plan.mark_stored` does that once JetStream acked the events).
    """
    plan = Plan(events=[], duplicates=0, group=group, services=services)
    alerts = sorted(payload.alerts, key=lambda a: (a.starts_at, a.fingerprint))
    keys = [alert_key(a) for a in alerts]
    ids = [alert_id(a, key) for a, key in zip(alerts, keys, strict=True)]
    if alerts and payload.truncated_alerts == 0:
        _absent_ended(group, set(ids), payload)
    for alert, key, aid in zip(alerts, keys, ids, strict=True):
        memory = group.alerts.get(aid)
        if memory is not None and alert.status == "firing" and "resolved" not in memory.stored:
            memory.ends_at = None  # firing (again): it had only dropped out of a notification
        if memory is not None and alert.status in memory.stored:
            plan.duplicates += 1
            continue
        if memory is None:
            incident = _incident_for(alert, aid, group, services, window)
            memory = AlertMemory(incident_id=incident, starts_at=alert.starts_at)
            group.alerts[aid] = memory
        if alert.status == "firing":
            _fired(alert, memory.incident_id, group, services)
        else:
            memory.ends_at = alert.ends_at or alert.starts_at
        if group.incident_id is None:
            group.incident_id = memory.incident_id
        event = alert_to_event(alert, payload, memory.incident_id, event_id_for(alert, key))
        plan.events.append(event)
        plan.marks.append((event.id, aid, alert.status))
    _forget_old(group)
    return plan


def _absent_ended(group: GroupMemory, present: set[str], payload: WebhookPayload) -> None:
    """A notification lists every alert of its group (unless truncated by `max_alerts`), so
    an alert missing from it no longer fires there: resolved while Vigil was not told
    (`send_resolved: false`, a notification given up), silenced or inhibited. Without this,
    a lost resolution would keep the group's incident current forever."""
    seen_at = max(a.ends_at or a.starts_at for a in payload.alerts)
    for aid, memory in group.alerts.items():
        if memory.ends_at is None and aid not in present:
            memory.ends_at = max(seen_at, memory.starts_at)


def _incident_for(
    alert: WebhookAlert,
    aid: str,
    group: GroupMemory,
    services: dict[str, ServiceMemory],
    window: timedelta,
) -> str:
    if group.incident_id is not None and (
        group.firing() or _within(group.last_fired_at, alert.starts_at, window)
    ):
        return group.incident_id
    service = service_of(alert)
    known = services.get(service) if service else None
    if known is not None and _within(known.last_fired_at, alert.starts_at, window):
        return known.incident_id
    return incident_id_for(alert, aid)


def _fired(
    alert: WebhookAlert, incident: str, group: GroupMemory, services: dict[str, ServiceMemory]
) -> None:
    """A firing alert makes its incident the current one of its group and of its service."""
    if group.last_fired_at is None or _newer(alert.starts_at, incident, group):
        group.incident_id, group.last_fired_at = incident, alert.starts_at
    service = service_of(alert)
    if service:
        known = services.get(service)
        if known is None or _newer(alert.starts_at, incident, known):
            # A new record, not an update: the receiver writes the records that were replaced.
            services[service] = ServiceMemory(incident_id=incident, last_fired_at=alert.starts_at)


def _newer(at: datetime, incident: str, current: GroupMemory | ServiceMemory) -> bool:
    """The newest firing is current; on a tie, the larger incident id, so every replica and
    every order of arrival agrees (`merge_groups` and the index's merge use the same rule)."""
    assert current.last_fired_at is not None
    return (at, incident) > (current.last_fired_at, current.incident_id or "")


def _within(earlier: datetime | None, at: datetime, window: timedelta) -> bool:
    return earlier is not None and abs(at - earlier) <= window


def _forget_old(group: GroupMemory) -> None:
    """Alerts long over leave the record, so a busy group's record stays small."""
    ends = [a.ends_at for a in group.alerts.values() if a.ends_at is not None]
    if not ends:
        return
    horizon = max(ends) - FORGET_RESOLVED_AFTER
    for aid in [
        a for a, m in group.alerts.items() if m.ends_at is not None and m.ends_at < horizon
    ]:
        del group.alerts[aid]


def merge_groups(ours: GroupMemory, theirs: GroupMemory) -> GroupMemory:
    """Two replicas wrote one group: keep every alert and the union of what is stored.

    An alert both assigned keeps `theirs` (already written); the newest firing wins the group.
    """
    merged = theirs.model_copy(deep=True)
    for aid, mine in ours.alerts.items():
        known = merged.alerts.get(aid)
        if known is None:
            merged.alerts[aid] = mine
        else:
            known.stored = sorted(set(known.stored) | set(mine.stored))  # type: ignore[arg-type]
            known.ends_at = known.ends_at or mine.ends_at
    if (
        ours.last_fired_at is not None
        and ours.incident_id is not None
        and (merged.last_fired_at is None or _newer(ours.last_fired_at, ours.incident_id, merged))
    ):
        merged.incident_id, merged.last_fired_at = ours.incident_id, ours.last_fired_at
    merged.incident_id = merged.incident_id or ours.incident_id
    return merged
