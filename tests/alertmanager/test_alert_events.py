"""The receiver's pure logic: Alertmanager's payload, derived ids, alerts into events."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from alertmanager.alert_events import (
    CUT_MARK,
    EVENT_BUDGET,
    alert_id,
    alert_key,
    event_id_for,
    incident_id_for,
)
from alertmanager.correlation import Plan, correlate
from alertmanager.memory import GroupMemory
from alertmanager.payload import WebhookAlert, WebhookPayload
from eventlog.envelope import Event, parse_event
from eventlog.payloads import AnomalyDetected, AnomalyResolved

# As Alertmanager 0.25 sends it (nanoseconds, an offset, Go's zero time for endsAt).
PAYLOAD: dict[str, Any] = {
    "receiver": "vigil",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighLatency", "service": "checkout", "severity": "critical"},
            "annotations": {"summary": "p99 over 2s"},
            "startsAt": "2026-11-24T13:08:45.828123456+01:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
            "fingerprint": "1a30ba71cca2921f",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "DiskFull", "job": "node"},
            "annotations": {},
            "startsAt": "2026-11-24T11:00:00Z",
            "endsAt": "2026-11-24T12:00:00Z",
            "generatorURL": "",
            "fingerprint": "b2c3d4e5f6a7b8c9",
        },
    ],
    "groupLabels": {"alertname": "HighLatency"},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "version": "4",
    "groupKey": '{}:{alertname="HighLatency"}',
    "truncatedAlerts": 0,
}


NOW = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def plan_of(payload: WebhookPayload, group: GroupMemory | None = None, **kw: Any) -> Plan:
    """The plan of a notification to a Vigil that has seen `group` (nothing, by default)."""
    return correlate(payload, group or GroupMemory(), {}, timedelta(minutes=15), now=NOW, **kw)


def events_of(payload: WebhookPayload, group: GroupMemory | None = None) -> list[Event]:
    return plan_of(payload, group).events


def seen_firing() -> GroupMemory:
    """A group that has seen PAYLOAD's resolved alert firing (and stored it)."""
    firing = copy.deepcopy(PAYLOAD)
    firing["alerts"] = [a for a in firing["alerts"] if a["status"] == "resolved"]
    for a in firing["alerts"]:
        a["status"], a["endsAt"] = "firing", "0001-01-01T00:00:00Z"
    group = GroupMemory()
    plan_of(WebhookPayload.model_validate(firing), group).mark_stored(group)
    return group


def test_alerts_become_detected_and_resolved_events() -> None:
    resolved, detected = events_of(WebhookPayload.model_validate(PAYLOAD), seen_firing())
    assert isinstance(detected.data, AnomalyDetected)
    assert detected.data.service == "checkout" and detected.data.severity == "critical"
    assert detected.data.group_key == '{}:{alertname="HighLatency"}'
    assert detected.occurred_at == detected.data.starts_at
    assert isinstance(resolved.data, AnomalyResolved)
    assert resolved.data.ends_at.isoformat() == "2026-11-24T12:00:00+00:00"
    assert resolved.occurred_at == resolved.data.ends_at
    for e in (detected, resolved):
        assert parse_event(e.to_json()) == e  # strict on the wire, like the projector


def test_go_zero_time_means_still_firing() -> None:
    payload = WebhookPayload.model_validate(PAYLOAD)
    assert payload.alerts[0].ends_at is None


def test_the_same_notification_again_is_the_same_events() -> None:
    """repeat_interval, a retry, or another Alertmanager replica: nothing new to store."""
    first = events_of(WebhookPayload.model_validate(PAYLOAD), seen_firing())
    again = events_of(WebhookPayload.model_validate(copy.deepcopy(PAYLOAD)), seen_firing())
    assert len(first) == 2
    assert [e.to_json() for e in first] == [e.to_json() for e in again]


def ids(alert: WebhookAlert) -> tuple[str, str]:
    key = alert_key(alert.fingerprint, alert.starts_at)
    return incident_id_for(alert_id(key)), str(event_id_for(key, alert.status))


def test_ids_tell_firings_and_statuses_apart() -> None:
    payload = WebhookPayload.model_validate(PAYLOAD)
    alert = payload.alerts[0]
    later = alert.model_copy(update={"starts_at": alert.starts_at.replace(hour=15)})
    resolved = alert.model_copy(update={"status": "resolved"})
    assert ids(later)[0] != ids(alert)[0]  # a new firing, a new incident
    assert ids(resolved)[0] == ids(alert)[0]  # its resolution joins it
    assert len({ids(alert)[1], ids(later)[1], ids(resolved)[1]}) == 3


def test_the_same_instant_written_differently_is_the_same_alert() -> None:
    other = copy.deepcopy(PAYLOAD)
    other["alerts"][0]["startsAt"] = "2026-11-24T12:08:45.828123Z"
    a = WebhookPayload.model_validate(PAYLOAD).alerts[0]
    b = WebhookPayload.model_validate(other).alerts[0]
    assert ids(a) == ids(b)


def test_an_oversized_annotation_is_cut_to_fit_and_the_event_says_so() -> None:
    """A 1.2 MB annotation: the event must fit one NATS message (1 MB), or every retry fails."""
    big = copy.deepcopy(PAYLOAD)
    description = "x" * 1_200_000
    big["alerts"][0]["annotations"]["description"] = description
    (event,) = events_of(WebhookPayload.model_validate(big))
    assert len(event.to_json()) <= EVENT_BUDGET
    assert isinstance(event.data, AnomalyDetected)
    assert event.data.truncated == {"annotations.description": 1_200_000}
    kept = event.data.annotations["description"]
    assert kept.endswith(CUT_MARK) and description.startswith(kept.removesuffix(CUT_MARK))
    assert len(kept) > EVENT_BUDGET // 2  # cut by what it must lose, not to a stub
    assert event.data.annotations["summary"] == "p99 over 2s"  # the rest as it came
    assert parse_event(event.to_json()) == event


def test_an_alert_too_large_even_cut_is_refused_and_the_rest_stored() -> None:
    """Thousands of labels: cutting each text to its minimum is not enough."""
    huge = copy.deepcopy(PAYLOAD)
    huge["alerts"][0]["labels"] |= {f"l{i}": "v" * 300 for i in range(2000)}
    plan = plan_of(WebhookPayload.model_validate(huge), seen_firing(), budget=64_000)
    assert [(r.position, r.fingerprint) for r in plan.refused] == [(0, "1a30ba71cca2921f")]
    assert "64000" in plan.refused[0].reason
    assert [e.type for e in plan.events] == ["AnomalyResolved"]  # the other alert


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("version",), "3", "version"),
        (("alerts", 0, "status"), "pending", "alerts.0.status"),
        (("alerts", 0, "startsAt"), "2026-11-24T13:08:45", "alerts.0.startsAt"),
        (("alerts", 0, "fingerprint"), "", "alerts.0.fingerprint"),
        (("alerts", 0, "labels"), {}, "alerts.0.labels"),
        (("groupKey",), None, "groupKey"),
    ],
)
def test_a_payload_that_does_not_fit_names_the_field(path: tuple, value: Any, field: str) -> None:
    bad = copy.deepcopy(PAYLOAD)
    target = bad
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as caught:
        WebhookPayload.model_validate(bad)
    locations = {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}
    assert field in locations


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)


@given(json_values)
def test_arbitrary_json_is_a_payload_or_a_validation_error(value: Any) -> None:
    """Never anything else (which would be a 500 at the webhook)."""
    try:
        payload = WebhookPayload.model_validate_json(
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        )
    except (ValidationError, orjson.JSONEncodeError):
        return
    events_of(payload)


@given(st.dictionaries(st.text(), json_values, max_size=6).map(lambda d: {**PAYLOAD, **d}))
def test_near_misses_are_a_payload_or_a_validation_error(value: dict[str, Any]) -> None:
    try:
        payload = WebhookPayload.model_validate(value)
    except ValidationError:
        return
    for event in events_of(payload):
        assert parse_event(event.to_json()) == event
