"""Which incident each alert joins, and which of its events are new: pure, so it is testable.

An alert joins, in this order: the incident it already belongs to (a re-sent or resolved
alert); its group's incident while the group has alerts firing or fired within the window;
the incident of its service when an alert of that service fired within the window; else a
new incident whose id is derived from the alert (so two Vigil replicas handling the same
notification open the same one). Windows are measured between alerts' `startsAt`, not the
wall clock, so the answer does not depend on when the notification arrives.

The read model must match what Alertmanager knows, whatever order notifications come in:
- a firing copy of an alert already resolved (same fingerprint and `startsAt`) is stale;
- a resolution finds the open firing of its fingerprint in its group even when its sender
  rewrote `startsAt`, and a resolution of nothing Vigil saw fire stores nothing;
- an alert missing from a complete notification of its group has left the firing state
  there (silenced, inhibited, or its resolution lost): `AnomalyWithdrawn`; listed again, it
  fires again (`AnomalyDetected` with `returned`).

What was seen is remembered per group (`GroupMemory`, one record per `groupKey`) and per
service (`ServiceMemory`); `alertmanager.alert_index` keeps both in JetStream KV.
"""

from __future__ import annotations

import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from alertmanager.alert_events import (
    EVENT_BUDGET,
    AlertTooLarge,
    alert_id,
    alert_key,
    event_id_for,
    firing_event,
    incident_id_for,
    resolved_event,
    withdrawn_event,
)
from alertmanager.memory import AlertMemory, GroupMemory, ServiceMemory
from alertmanager.payload import WebhookAlert, WebhookPayload
from eventlog.envelope import Event

# A resolved alert is forgotten this long after it ended: Alertmanager stops sending it
# much sooner (its alerts.gc-interval), so a late copy is still known as a duplicate.
FORGET_RESOLVED_AFTER = timedelta(days=1)
# A withdrawn alert may come back when its silence ends, which can be weeks: it is kept as
# long as the record lives, so its return is told as a return, not lost as a duplicate.
FORGET_WITHDRAWN_AFTER = timedelta(days=30)
# A firing copy of a resolved alert this soon after its resolution is stale (an Alertmanager
# retry, an HA peer); later, Alertmanager is firing it again: it resolved it on its own when
# Prometheus went quiet past endsAt, then Prometheus came back with the same startsAt.
REFIRE_AFTER = timedelta(minutes=5)


def service_of(alert: WebhookAlert) -> str | None:
    return alert.labels.get("service") or alert.labels.get("job")


@dataclass
class Refusal:
    """An alert that cannot be stored as any event: `position` in the notification's list."""

    position: int
    fingerprint: str
    reason: str


@dataclass
class Plan:
    """What one notification changes: events to store, and the memories once they are."""

    services: dict[str, ServiceMemory]
    events: list[Event] = field(default_factory=list)
    duplicates: int = 0  # alerts whose events are stored already (or listed twice)
    stale: int = 0  # alerts older than what is known: nothing to store
    refused: list[Refusal] = field(default_factory=list)
    group_changed: bool = False
    late: int = 0  # events JetStream already had when published: a concurrent copy's
    # (event id, alert id, label) of each event, to mark stored once JetStream acked it.
    marks: list[tuple[uuid.UUID, str, str]] = field(default_factory=list)
    _planned: set[tuple[str, str]] = field(default_factory=set)

    def add(self, event: Event, aid: str, label: str) -> None:
        if (aid, label) in self._planned:
            return  # planned already (a withdrawal both absent and superseded)
        self._planned.add((aid, label))
        self.events.append(event)
        self.marks.append((event.id, aid, label))
        self.group_changed = True

    def mark_stored(
        self, group: GroupMemory, acked: Container[uuid.UUID] | None = None
    ) -> list[tuple[str, str]]:
        """Record every event as stored in `group` (the record as it is now), or only those
        `acked` (the rest of a failed publish); returns the (alert id, label) marked."""
        marked = []
        for event_id, aid, label in self.marks:
            memory = group.alerts.get(aid)
            if memory is None or (acked is not None and event_id not in acked):
                continue
            if label not in memory.stored:
                memory.stored.append(label)
            marked.append((aid, label))
        return marked


@dataclass
class _Context:
    payload: WebhookPayload
    group: GroupMemory
    plan: Plan
    window: timedelta
    budget: int
    now: datetime
    series: dict[str, list[tuple[str, AlertMemory]]]  # the group's memories by fingerprint


def correlate(
    payload: WebhookPayload,
    group: GroupMemory,
    services: dict[str, ServiceMemory],
    window: timedelta,
    *,
    now: datetime,
    budget: int = EVENT_BUDGET,
) -> Plan:
    """Assign each alert an incident and pick the events not stored yet.

    `group` and `services` are updated in place with the assignments (not with what is
    stored: `Plan.mark_stored` does that once JetStream acked the events). `now` is when the
    notification arrived: the time of its withdrawals. An alert whose event cannot fit in
    `budget` bytes even cut is refused (`Plan.refused`) and leaves no trace.
    """
    series: dict[str, list[tuple[str, AlertMemory]]] = {}
    for aid, memory in group.alerts.items():
        series.setdefault(memory.fingerprint or "", []).append((aid, memory))
    ctx = _Context(payload, group, Plan(services=services), window, budget, now, series)
    order = sorted(
        enumerate(payload.alerts),
        key=lambda p: (p[1].starts_at, p[1].fingerprint, p[1].status == "resolved"),
    )
    targets = [(pos, alert, *_target(group, alert, series)) for pos, alert in order]
    if payload.alerts and payload.truncated_alerts == 0:
        _withdraw_absent(ctx, {aid for *_, aid, _, _ in targets})
    listed: set[tuple[str, str]] = set()
    for pos, alert, aid, key, memory in targets:
        if (aid, alert.status) in listed:  # the same alert twice in one notification
            ctx.plan.duplicates += 1
            continue
        listed.add((aid, alert.status))
        try:
            if alert.status == "firing":
                _plan_firing(ctx, alert, aid, key, memory)
            else:
                _plan_resolution(ctx, alert, aid, key, memory)
        except AlertTooLarge as exc:
            ctx.plan.refused.append(Refusal(pos, alert.fingerprint, str(exc)))
    if ctx.plan.group_changed:
        _forget_old(group)
    return ctx.plan


def _target(
    group: GroupMemory, alert: WebhookAlert, series: dict[str, list[tuple[str, AlertMemory]]]
) -> tuple[str, str, AlertMemory | None]:
    """The alert's id, key and memory. When its key is not known, the same series' memory it
    is about: for a resolution, the open firing it ends (the latest that started before it
    ended: its sender may have rewritten startsAt) or the one it already ended; for a
    firing, a resolution that ended after it started (the copy is older than the resolution:
    stale). `series`: the group's memories by fingerprint."""
    key = alert_key(alert.fingerprint, alert.starts_at)
    aid = alert_id(key)
    memory = group.alerts.get(aid)
    if memory is not None and (alert.status == "firing" or memory.incident_id is not None):
        return aid, key, memory
    known = series.get(alert.fingerprint, [])
    if alert.status == "resolved":
        ended = alert.ends_at or alert.starts_at
        match = [
            (m.starts_at, a, m)
            for a, m in known
            if m.incident_id is not None and m.starts_at <= ended
            and (not m.resolved or m.ends_at == ended)  # open, or this very resolution
        ]  # fmt: skip
    else:
        match = [(m.starts_at, a, m) for a, m in known if m.resolved and m.ends_at is not None
                 and m.ends_at >= alert.starts_at]  # fmt: skip
    if not match:
        return aid, key, memory  # unknown, or a resolution already known for nothing fired
    starts_at, aid, memory = max(match, key=lambda f: (f[0], f[1]))
    return aid, alert_key(alert.fingerprint, starts_at), memory


def _plan_firing(
    ctx: _Context, alert: WebhookAlert, aid: str, key: str, memory: AlertMemory | None
) -> None:
    if memory is not None and memory.resolved:
        assert memory.ends_at is not None
        if ctx.now - memory.ends_at <= REFIRE_AFTER:
            ctx.plan.stale += 1  # a copy older than the resolution already stored
            return
        if memory.starts_at != alert.starts_at:  # a resolution kept under its own startsAt
            key = alert_key(alert.fingerprint, alert.starts_at)
            aid, memory = alert_id(key), None
        else:  # Alertmanager fires it again
            memory.resolved = False
            memory.generation += memory.incident_id is not None
    label = "firing" if memory is None else memory.firing_label()
    if memory is not None and memory.ends_at is None and label in memory.stored:
        ctx.plan.duplicates += 1
        return
    incident = memory.incident_id if memory is not None else None
    incident = incident or _incident_for(ctx, alert, aid)
    event = firing_event(
        alert, ctx.payload.group_key, incident, event_id_for(key, label),
        returned=memory is not None and "firing" in memory.stored, budget=ctx.budget,
    )  # fmt: skip
    # A series fires once at a time: an older firing of it still open has ended (its
    # withdrawal goes first, so the read model ends up with this one firing).
    for older_aid, older in ctx.series.get(alert.fingerprint, []):
        if older.starts_at < alert.starts_at:
            _withdraw(ctx, older_aid, older, alert.starts_at)
    if memory is None:
        memory = AlertMemory(
            incident_id=incident, fingerprint=alert.fingerprint, starts_at=alert.starts_at
        )
        ctx.group.alerts[aid] = memory
    memory.incident_id = incident
    memory.ends_at = None  # listed: it fires (again, after a withdrawal)
    _fired(alert, incident, ctx.group, ctx.plan.services)
    ctx.plan.add(event, aid, label)


def _plan_resolution(
    ctx: _Context, alert: WebhookAlert, aid: str, key: str, memory: AlertMemory | None
) -> None:
    if memory is None:  # a resolution alone never opens an incident, but it is remembered:
        ctx.group.alerts[aid] = AlertMemory(  # a firing copy that comes after it is stale
            incident_id=None, fingerprint=alert.fingerprint, starts_at=alert.starts_at,
            ends_at=alert.ends_at or alert.starts_at, resolved=True,
        )  # fmt: skip
        ctx.plan.stale += 1
        ctx.plan.group_changed = True
        return
    if memory.resolved_label() in memory.stored:
        ctx.plan.duplicates += 1
        return
    if memory.incident_id is None:
        ctx.plan.stale += 1
        return
    events = []
    if memory.generation == 0 and "firing" not in memory.stored:  # never told: tell it first
        returned = firing_event(
            alert, ctx.payload.group_key, memory.incident_id, event_id_for(key, "firing"),
            starts_at=memory.starts_at, budget=ctx.budget,
        )  # fmt: skip
        events.append((returned, "firing"))
    label = memory.resolved_label()
    resolution = resolved_event(
        alert, memory.starts_at, memory.incident_id, event_id_for(key, label), budget=ctx.budget
    )
    events.append((resolution, label))
    memory.resolved = True
    memory.ends_at = max(alert.ends_at or alert.starts_at, memory.starts_at)
    for event, label in events:
        ctx.plan.add(event, aid, label)


def _withdraw_absent(ctx: _Context, present: set[str]) -> None:
    """A notification lists every alert of its group (unless truncated by `max_alerts`), so
    an alert missing from it no longer fires there: silenced, inhibited, or resolved while
    Vigil was not told (`send_resolved: false`, a notification given up). Without this, a
    lost resolution would keep the group's incident current, and the alert firing, forever."""
    seen_at = max(a.ends_at or a.starts_at for a in ctx.payload.alerts)
    for aid, memory in ctx.group.alerts.items():
        if aid not in present:
            _withdraw(ctx, aid, memory, seen_at)


def _withdraw(ctx: _Context, aid: str, memory: AlertMemory, ended: datetime) -> None:
    """The firing leaves the firing state without a resolution: AnomalyWithdrawn (planned
    again until it is stored). Told whether or not its firing is known stored here (another
    replica, or a write of the marks that was lost, may have stored it): a withdrawal of a
    firing that never reached the stream opens nothing in the read model."""
    if memory.resolved or memory.incident_id is None or memory.fingerprint is None:
        return
    if memory.ends_at is None:
        memory.ends_at = max(ended, memory.starts_at)
        memory.generation += 1
        ctx.plan.group_changed = True
    label = f"withdrawn.{memory.generation}"
    if memory.generation == 0 or label in memory.stored:
        return  # ended without a withdrawal (written before Vigil told them), or stored
    key = alert_key(memory.fingerprint, memory.starts_at)
    event = withdrawn_event(
        memory.fingerprint, memory.starts_at, ctx.payload.group_key, memory.incident_id,
        event_id_for(key, label), noticed_at=ctx.now,
    )  # fmt: skip
    ctx.plan.add(event, aid, label)


def _incident_for(ctx: _Context, alert: WebhookAlert, aid: str) -> str:
    group, window = ctx.group, ctx.window
    if group.incident_id is not None and (
        group.firing() or _within(group.last_fired_at, alert.starts_at, window)
    ):
        return group.incident_id
    service = service_of(alert)
    known = ctx.plan.services.get(service) if service else None
    if known is not None and known.near(alert.starts_at, window):
        return known.incident_id
    return incident_id_for(aid)


def _fired(
    alert: WebhookAlert, incident: str, group: GroupMemory, services: dict[str, ServiceMemory]
) -> None:
    """A firing alert makes its incident the current one of its group and of its service."""
    if group.last_fired_at is None or _newer(alert.starts_at, incident, group):
        group.incident_id, group.last_fired_at = incident, alert.starts_at
    service = service_of(alert)
    if not service:
        return
    at, known = alert.starts_at, services.get(service)
    # A new record, not an update: the receiver writes the records that were replaced.
    if known is None or (known.incident_id != incident and _newer(at, incident, known)):
        services[service] = ServiceMemory(incident_id=incident, last_fired_at=at, first_fired_at=at)
    elif known.incident_id == incident:
        first = known.first_fired_at or known.last_fired_at
        if at < first or at > known.last_fired_at:  # the incident's span grows
            services[service] = ServiceMemory(
                incident_id=incident, first_fired_at=min(first, at),
                last_fired_at=max(known.last_fired_at, at),
            )  # fmt: skip


def _newer(at: datetime, incident: str, current: GroupMemory | ServiceMemory) -> bool:
    """The newest firing is current; on a tie, the larger incident id, so every order of
    arrival agrees."""
    assert current.last_fired_at is not None
    return (at, incident) > (current.last_fired_at, current.incident_id or "")


def _within(earlier: datetime | None, at: datetime, window: timedelta) -> bool:
    return earlier is not None and abs(at - earlier) <= window


def _forget_old(group: GroupMemory) -> None:
    """Alerts long over leave the record, so a busy group's record stays small."""
    ends = [a.ends_at for a in group.alerts.values() if a.ends_at is not None]
    if not ends:
        return
    latest = max(ends)
    for aid in [
        a
        for a, m in group.alerts.items()
        if m.ends_at is not None
        # (a difference, not latest - horizon: a timestamp near year 1 must not overflow)
        and latest - m.ends_at > (FORGET_RESOLVED_AFTER if m.resolved else FORGET_WITHDRAWN_AFTER)
    ]:
        del group.alerts[aid]
