"""Correlation and dedup, pure: which incident each alert joins, and what is new to store."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from alertmanager.correlation import (
    GroupMemory,
    ServiceMemory,
    correlate,
    merge_groups,
)
from alertmanager.payload import WebhookPayload
from eventlog.envelope import Event
from eventlog.payloads import AnomalyDetected

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)


def alert(
    name: str, fp: str, *, at: timedelta = timedelta(0), resolved_at: timedelta | None = None,
    **labels: str,
) -> dict[str, Any]:  # fmt: skip
    return {
        "status": "firing" if resolved_at is None else "resolved",
        "labels": {"alertname": name, **labels},
        "annotations": {},
        "startsAt": (T0 + at).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z" if resolved_at is None else (T0 + resolved_at).isoformat(),
        "fingerprint": fp,
    }


def notification(group: str, *alerts: dict[str, Any]) -> WebhookPayload:
    firing = any(a["status"] == "firing" for a in alerts)
    return WebhookPayload.model_validate(
        {
            "version": "4",
            "receiver": "vigil",
            "status": "firing" if firing else "resolved",
            "groupKey": group,
            "alerts": list(alerts),
        }
    )


class Vigil:
    """What the receiver keeps between notifications, with every plan's events stored."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupMemory] = {}
        self.services: dict[str, ServiceMemory] = {}
        self.stored: list[Event] = []

    def receive(self, payload: WebhookPayload) -> list[Event]:
        group = self.groups.setdefault(payload.group_key, GroupMemory())
        plan = correlate(payload, group, self.services, WINDOW)
        plan.mark_stored()
        self.stored += plan.events
        return plan.events

    def restart(self) -> None:
        """Only what the records hold survives (they live in JetStream KV)."""
        self.groups = {
            k: GroupMemory.model_validate_json(g.model_dump_json()) for k, g in self.groups.items()
        }
        self.services = {
            k: ServiceMemory.model_validate_json(s.model_dump_json())
            for k, s in self.services.items()
        }

    def incidents(self) -> set[str]:
        return {e.incident_id for e in self.stored}


def test_alerts_of_one_group_join_one_incident_while_it_fires() -> None:
    vigil = Vigil()
    a = alert("HighLatency", "a1", service="checkout")
    b = alert("HighLatency", "b1", at=timedelta(hours=2), service="cart")
    (first,) = vigil.receive(notification("g", a))
    later = vigil.receive(notification("g", a, b))  # a is re-sent: only b is new
    assert [e.incident_id for e in later] == [first.incident_id]


def test_a_resolved_alert_joins_the_incident_it_fired_in() -> None:
    vigil = Vigil()
    vigil.receive(notification("g", alert("Down", "x", service="api")))
    vigil.receive(notification("g", alert("Down", "x", resolved_at=timedelta(hours=5))))
    assert [e.type for e in vigil.stored] == ["AnomalyDetected", "AnomalyResolved"]
    assert len(vigil.incidents()) == 1


def test_one_service_within_the_window_is_one_incident_across_groups() -> None:
    vigil = Vigil()
    vigil.receive(notification("g1", alert("HighLatency", "a", service="checkout")))
    vigil.receive(notification("g2", alert("ErrorRate", "b", at=WINDOW, service="checkout")))
    assert len(vigil.incidents()) == 1
    vigil.receive(notification("g3", alert("PodCrash", "c", at=3 * WINDOW, service="checkout")))
    vigil.receive(notification("g4", alert("ErrorRate", "d", service="payments")))
    assert len(vigil.incidents()) == 3  # too late for the first; another service


def test_a_quiet_group_opens_a_new_incident_after_the_window() -> None:
    vigil = Vigil()
    vigil.receive(notification("g", alert("Down", "x")))
    vigil.receive(notification("g", alert("Down", "x", resolved_at=timedelta(minutes=5))))
    vigil.receive(notification("g", alert("Down", "x", at=timedelta(minutes=10))))  # flap
    assert len(vigil.incidents()) == 1
    vigil.receive(
        notification("g", alert("Down", "x", at=timedelta(minutes=10), resolved_at=timedelta(1)))
    )
    vigil.receive(notification("g", alert("Down", "x", at=timedelta(days=2))))
    assert len(vigil.incidents()) == 2


def test_an_alert_missing_from_its_group_no_longer_keeps_the_incident_current() -> None:
    """Its resolution was never sent (send_resolved: false, or given up): the next complete
    notification of the group, which lists every alert still in it, says it is gone."""
    vigil = Vigil()
    vigil.receive(notification("g", alert("Down", "x")))
    later = alert("Down", "y", at=timedelta(hours=3))
    vigil.receive(notification("g", later))  # x is not in the group any more
    assert len(vigil.incidents()) == 2
    vigil.receive(notification("g", later, alert("Down", "z", at=timedelta(hours=5))))
    assert len(vigil.incidents()) == 2  # y still fires: z joins its incident


def test_a_truncated_notification_says_nothing_about_missing_alerts() -> None:
    vigil = Vigil()
    vigil.receive(notification("g", alert("Down", "x")))
    truncated = notification("g", alert("Down", "y", at=timedelta(hours=3)))
    vigil.receive(truncated.model_copy(update={"truncated_alerts": 1}))
    assert len(vigil.incidents()) == 1  # x may still fire: y joins its incident


def test_an_alert_storm_opens_one_incident_per_service() -> None:
    """400 alerts in 8 groups (group_by: [alertname, service]), notified as Alertmanager does:
    each notification of a group carries every alert of the group so far."""
    vigil = Vigil()
    alerts: dict[str, list[dict[str, Any]]] = {}
    for i in range(400):
        service = ("checkout", "payments")[i % 2]
        name = ("HighLatency", "ErrorRate", "PodRestarts", "SaturationHigh")[i // 2 % 4]
        group = f"{{}}:{{alertname={name!r}, service={service!r}}}"
        alerts.setdefault(group, []).append(
            alert(name, f"fp{i}", at=timedelta(seconds=i), service=service, pod=f"p{i}")
        )
        if i % 25 == 0:  # group_interval passes: every group is notified again
            for key, group_alerts in alerts.items():
                vigil.receive(notification(key, *group_alerts))
    for key, group_alerts in alerts.items():
        vigil.receive(notification(key, *group_alerts))
    assert len(vigil.stored) == 400
    assert len({e.id for e in vigil.stored}) == 400
    by_incident = Counter(
        e.data.service for e in vigil.stored if isinstance(e.data, AnomalyDetected)
    )
    assert len(vigil.incidents()) == 2 and by_incident == {"checkout": 200, "payments": 200}


def test_records_survive_a_restart() -> None:
    vigil = Vigil()
    a = alert("Down", "x", service="api")
    vigil.receive(notification("g", a))
    vigil.restart()
    assert vigil.receive(notification("g", a)) == []  # repeat_interval after a restart
    (resolved,) = vigil.receive(notification("g", alert("Down", "x", resolved_at=WINDOW)))
    assert resolved.incident_id == vigil.stored[0].incident_id


def test_merging_two_replicas_records_keeps_both() -> None:
    ours, theirs = Vigil(), Vigil()
    ours.receive(notification("g", alert("Down", "x")))
    theirs.receive(notification("g", alert("Down", "y", at=timedelta(minutes=1))))
    merged = merge_groups(ours.groups["g"], theirs.groups["g"])
    assert set(merged.alerts) == set(ours.groups["g"].alerts) | set(theirs.groups["g"].alerts)
    assert merged.incident_id == theirs.groups["g"].incident_id  # the newest firing


# A universe of alert firings; each notification re-sends any of them, firing or resolved.
FIRINGS = [
    ("Down", "fp-a", timedelta(0), "api"),
    ("Down", "fp-b", timedelta(minutes=1), "api"),
    ("Slow", "fp-c", timedelta(minutes=40), "db"),
    ("Slow", "fp-a", timedelta(hours=3), "api"),  # fp-a fires again later
]
sends = st.lists(
    st.tuples(
        st.sampled_from(["g1", "g2"]),
        st.lists(st.tuples(st.integers(0, len(FIRINGS) - 1), st.booleans()), max_size=4),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(sends, st.integers(0, 12))
def test_every_event_is_stored_once_and_an_alert_keeps_its_incident(
    sends: list[tuple[str, list[tuple[int, bool]]]], restart_at: int
) -> None:
    vigil = Vigil()
    sent: dict[str, set[tuple[int, bool]]] = {}
    stored: dict[str, list[Event]] = {}
    for step, (group, picks) in enumerate(sends):
        if step == restart_at:
            vigil.restart()
        chosen = dict(picks)  # one status per alert per notification
        items = []
        for i, resolved in chosen.items():
            name, fp, at, service = FIRINGS[i]
            end = at + timedelta(minutes=5) if resolved else None
            items.append(alert(name, fp, at=at, resolved_at=end, service=service))
            sent.setdefault(group, set()).add((i, resolved))
        if items:
            stored.setdefault(group, []).extend(vigil.receive(notification(group, *items)))
    for group, events in stored.items():
        assert len(events) == len(sent[group])  # each firing and resolution once, however re-sent
        incidents: dict[str, set[str]] = {}
        for e in events:
            key = f"{e.data.fingerprint}|{e.data.starts_at}"  # type: ignore[union-attr]
            incidents.setdefault(key, set()).add(e.incident_id)
        assert all(len(ids) == 1 for ids in incidents.values())  # an alert keeps its incident
