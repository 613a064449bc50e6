"""Correlation and dedup, pure: which incident each alert joins, and what is new to store."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from alertmanager.correlation import REFIRE_AFTER, Plan, correlate
from alertmanager.memory import GroupMemory, ServiceMemory
from alertmanager.payload import WebhookPayload
from eventlog.envelope import Event
from eventlog.payloads import AnomalyDetected, AnomalyResolved, AnomalyWithdrawn
from eventlog.readmodels import fold_incident

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
DAY = timedelta(days=1)


def alert(
    name: str, fp: str, *, at: timedelta = timedelta(0), resolved_at: timedelta | None = None,
    starts_at: timedelta | None = None, **labels: str,
) -> dict[str, Any]:  # fmt: skip
    """`starts_at`: what the sender puts in startsAt, when it is not `at` (a rewriting one)."""
    return {
        "status": "firing" if resolved_at is None else "resolved",
        "labels": {"alertname": name, **labels},
        "annotations": {},
        "startsAt": (T0 + (at if starts_at is None else starts_at)).isoformat(),
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


def arrival(payload: WebhookPayload) -> datetime:
    return max(a.ends_at or a.starts_at for a in payload.alerts) + timedelta(minutes=1)


class Vigil:
    """What the receiver keeps between notifications, with every plan's events stored."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupMemory] = {}
        self.services: dict[str, ServiceMemory] = {}
        self.stored: list[Event] = []
        self.last: Plan | None = None

    def receive(
        self, payload: WebhookPayload, *, store: bool = True, now: datetime | None = None
    ) -> list[Event]:
        """Correlate; `store`: JetStream acked every event (else: the publish failed); `now`:
        when it arrives (by default a minute after the latest time the notification holds)."""
        group = self.groups.setdefault(payload.group_key, GroupMemory())
        now = now or arrival(payload)
        self.last = plan = correlate(payload, group, self.services, WINDOW, now=now)
        if store:
            plan.mark_stored(group)
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


def test_an_older_alert_of_a_service_arriving_last_joins_its_incident() -> None:
    """Alerts at 0, 10 and 20 minutes in three groups, delivered in any order: the one at 0 is
    within the window of the one at 10, so all three are one incident."""
    for order in ((0, 1, 2), (1, 2, 0), (2, 1, 0), (0, 2, 1), (2, 0, 1), (1, 0, 2)):
        vigil = Vigil()
        for i in order:
            at = timedelta(minutes=10 * i)
            vigil.receive(notification(f"g{i}", alert(f"A{i}", f"fp{i}", at=at, service="api")))
        if order in ((0, 2, 1), (2, 0, 1)):
            continue  # 0 and 20 are 20 minutes apart: two incidents until 10 comes, by design
        assert len(vigil.incidents()) == 1, order


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


def firing_now(events: list[Event]) -> set[str]:
    """Fingerprints the read model shows firing, folded by the projector's own fold."""
    by_incident: dict[str, list[tuple[Event, int]]] = {}
    for seq, e in enumerate(events, 1):
        by_incident.setdefault(e.incident_id, []).append((e, seq))
    rows = [fold_incident(None, evs) for evs in by_incident.values()]
    return {fp for row in rows if row is not None for fp in row.firing}


def test_a_late_firing_copy_of_a_resolved_alert_is_stale() -> None:
    vigil = Vigil()
    vigil.receive(notification("g", alert("Down", "x", service="api")))
    vigil.receive(notification("g", alert("Down", "x", resolved_at=timedelta(minutes=5))))
    assert vigil.receive(notification("g", alert("Down", "x", service="api"))) == []
    assert vigil.last is not None and vigil.last.stale == 1
    assert firing_now(vigil.stored) == set()


def test_alertmanager_firing_a_resolved_alert_again_is_told() -> None:
    """Prometheus went quiet past endsAt: Alertmanager resolved the alert on its own; then
    Prometheus came back with the same startsAt, and Alertmanager fires it again (and keeps
    re-sending it). Long after the resolution, a firing copy is no stale copy."""
    vigil = Vigil()
    x = alert("Down", "x", service="api")
    vigil.receive(notification("g", x))
    vigil.receive(notification("g", alert("Down", "x", resolved_at=timedelta(minutes=5))))
    (again,) = vigil.receive(notification("g", x), now=T0 + timedelta(hours=1))
    assert isinstance(again.data, AnomalyDetected) and again.data.returned
    assert firing_now(vigil.stored) == {"x"} and len(vigil.incidents()) == 1
    (resolved,) = vigil.receive(notification("g", alert("Down", "x", resolved_at=DAY)))
    assert resolved.id != vigil.stored[1].id and firing_now(vigil.stored) == set()


def test_a_resolution_first_then_its_firing_copy_stores_nothing() -> None:
    """Out of order: the resolution of a firing Vigil never saw opens no incident, and the
    firing copy that comes after it is stale too."""
    vigil = Vigil()
    for a in alert("Down", "x", resolved_at=DAY), alert("Down", "x", service="api"):
        assert vigil.receive(notification("g", a)) == []
        assert vigil.last is not None and vigil.last.stale == 1
    assert vigil.incidents() == set()  # a resolution alone never opens an incident


def test_a_resolution_with_a_rewritten_start_ends_the_firing_of_its_fingerprint() -> None:
    """Fired at 10:00; the sender resolves it two hours later with startsAt = endsAt = 12:00."""
    vigil = Vigil()
    (fired,) = vigil.receive(notification("g", alert("Down", "x", service="api")))
    two_hours = timedelta(hours=2)
    (resolved,) = vigil.receive(
        notification("g", alert("Down", "x", starts_at=two_hours, resolved_at=two_hours))
    )
    assert resolved.incident_id == fired.incident_id and len(vigil.incidents()) == 1
    assert isinstance(resolved.data, AnomalyResolved)
    assert resolved.data.starts_at == T0  # it names the firing it ends
    assert firing_now(vigil.stored) == set()
    # The same resolution with the right startsAt is the same event: a duplicate.
    assert vigil.receive(notification("g", alert("Down", "x", resolved_at=two_hours))) == []


def test_the_same_alert_listed_twice_is_stored_once() -> None:
    vigil = Vigil()
    a = alert("Down", "x", service="api")
    events = vigil.receive(notification("g", a, a))
    assert len(events) == 1
    assert vigil.last is not None and vigil.last.duplicates == 1


def test_an_alert_gone_from_its_group_is_withdrawn_and_returns_when_listed_again() -> None:
    """Silenced (or inhibited) alerts drop out of their group's notifications; when the
    silence ends they are listed again, still firing, with the same startsAt."""
    vigil = Vigil()
    x, y = alert("Down", "x", service="api"), alert("Down", "y", service="api")
    vigil.receive(notification("g", x, y))
    (withdrawn,) = vigil.receive(notification("g", y))
    assert isinstance(withdrawn.data, AnomalyWithdrawn) and withdrawn.data.fingerprint == "x"
    assert firing_now(vigil.stored) == {"y"}
    assert vigil.receive(notification("g", y)) == []  # nothing new
    (back,) = vigil.receive(notification("g", x, y))
    assert isinstance(back.data, AnomalyDetected) and back.data.returned
    assert back.id != vigil.stored[0].id  # not the first firing again: it would be dropped
    assert firing_now(vigil.stored) == {"x", "y"}
    incident = fold_incident(None, [(e, n) for n, e in enumerate(vigil.stored, 1)])
    assert incident is not None and incident.anomalies == 2  # a return is not a new anomaly


def test_a_withdrawal_is_told_though_the_firing_was_not_marked_stored_here() -> None:
    """The firing reached the stream but the write of its mark was lost (or another replica
    stored it): when the alert leaves its group, the read model must hear of it."""
    vigil = Vigil()
    vigil.stored += vigil.receive(notification("g", alert("Down", "x"), alert("Down", "y")),
                                  store=False)  # fmt: skip
    for _ in range(2):
        vigil.receive(notification("g", alert("Down", "y")))
    assert firing_now(vigil.stored) == {"y"}


def test_a_firing_never_stored_is_told_before_its_resolution() -> None:
    """The firing's publish failed, then Alertmanager sent the alert resolved: the incident
    gets both, so it never opens with a resolution alone."""
    vigil = Vigil()
    vigil.receive(notification("g", alert("Down", "x", service="api")), store=False)
    events = vigil.receive(notification("g", alert("Down", "x", resolved_at=WINDOW)))
    assert [e.type for e in events] == ["AnomalyDetected", "AnomalyResolved"]
    assert len({e.incident_id for e in events}) == 1


# A universe of alert firings: (fingerprint, when it fires). fp-a fires again later.
FIRINGS = [("fp-a", timedelta(0)), ("fp-b", timedelta(minutes=1)),
           ("fp-c", timedelta(minutes=40)), ("fp-a", timedelta(hours=3))]  # fmt: skip
# What one notification lists: per firing, resolved?, startsAt rewritten on resolution?
listing = st.dictionaries(st.integers(0, len(FIRINGS) - 1), st.tuples(st.booleans(), st.booleans()))
sends = st.lists(st.tuples(listing, st.booleans(), st.booleans()), max_size=12)


@settings(max_examples=300, deadline=None)
@given(sends, st.integers(0, 12))
def test_the_read_model_matches_what_alertmanager_knows(
    sends: list[tuple[dict[int, tuple[bool, bool]], bool, bool]], restart_at: int
) -> None:
    """Each notification lists any firings, firing or resolved, complete or truncated; some
    publishes fail and the notification is sent again. After each complete one, the read
    model's firing alerts are exactly those it lists firing that were never resolved before;
    every event is stored once, an alert keeps its incident, no incident opens by a resolution.
    """
    vigil = Vigil()
    resolved: dict[int, datetime] = {}  # firings Alertmanager has said are resolved: when
    latest: dict[str, timedelta] = {}  # a fingerprint's latest firing sent: no older one after
    for step, (listed, truncated, fails) in enumerate(sends):
        if step == restart_at:
            vigil.restart()
        listed = {
            i: r
            for i, r in listed.items()
            if FIRINGS[i][1] >= latest.get(FIRINGS[i][0], FIRINGS[i][1])
        }
        by_fp = {FIRINGS[i][0]: (i, r) for i, r in sorted(listed.items())}  # one per series
        items = []
        for fp, (i, (is_resolved, rewrite)) in by_fp.items():
            at = FIRINGS[i][1]
            latest[fp] = at
            end = at + timedelta(minutes=5) if is_resolved else None
            rewritten = end if is_resolved and rewrite else None
            items.append(alert("Down", fp, at=at, resolved_at=end, starts_at=rewritten))
        if not items:
            continue
        payload = notification("g", *items)
        if truncated:
            payload = payload.model_copy(update={"truncated_alerts": 1})
        if fails:
            vigil.receive(payload, store=False)  # Alertmanager retries it:
        vigil.receive(payload)
        now, firing = arrival(payload), set()
        for fp, (i, (is_resolved, _)) in by_fp.items():
            if is_resolved:
                resolved[i] = T0 + FIRINGS[i][1] + timedelta(minutes=5)
            elif i not in resolved or now - resolved[i] > REFIRE_AFTER:  # else a stale copy
                resolved.pop(i, None)
                firing.add(fp)
        if not truncated:
            assert firing_now(vigil.stored) == firing
    assert len({e.id for e in vigil.stored}) == len(vigil.stored)  # each event stored once
    incidents: dict[str, set[str]] = {}
    for e in vigil.stored:
        key = f"{e.data.fingerprint}|{e.data.starts_at}"  # type: ignore[union-attr]
        incidents.setdefault(key, set()).add(e.incident_id)
    assert all(len(ids) == 1 for ids in incidents.values())  # an alert keeps its incident
    opened = {e.incident_id for e in vigil.stored if isinstance(e.data, AnomalyDetected)}
    assert {e.incident_id for e in vigil.stored} == opened  # none opened by a resolution
