"""Open anomalies folded from the event log, and the ids that make a re-emission harmless."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from detector.events import SeriesKey, change_event, incident_id_for, series_fingerprint
from detector.hysteresis import Change
from detector.rules import Rule, parse_rules
from detector.state import fold_open_episodes, load_open_episodes
from detector.verdicts import Verdict
from eventlog.envelope import Event, new_event
from eventlog.payloads import AnomalyDetected
from eventlog.publisher import EventPublisher

T = datetime(2024, 5, 1, tzinfo=UTC)
LABELS = {"__name__": "queue_depth", "service": "worker", "instance": "a:9100"}


def make_rule(kind: str = "threshold") -> Rule:
    detector = (
        {"kind": "threshold", "threshold": 100}
        if kind == "threshold"
        else {"kind": "forecast", "threshold": 100, "window": "30m", "horizon": "1h"}
    )
    rule = {"name": "queue", "query": "queue_depth", "labels": {"severity": "page"},
            "detector": detector}  # fmt: skip
    return parse_rules({"rules": [rule]}).rules[0]


def event(kind: str, starts: int, at: int, rule: Rule | None = None) -> Event:
    rule = rule or make_rule("forecast" if kind == "predicted" else "threshold")
    verdict = Verdict("breached", 130.0, crossing_at=(T + timedelta(hours=1)).timestamp())
    change = Change(kind, T + timedelta(minutes=starts), T + timedelta(minutes=at))  # type: ignore[arg-type]
    return change_event(rule, LABELS, change, verdict)


KEY = SeriesKey("queue", series_fingerprint("queue", LABELS))


def test_the_same_change_is_the_same_event_byte_for_byte() -> None:
    assert event("detected", 0, 2).to_json() == event("detected", 0, 2).to_json()
    assert event("detected", 0, 2).id != event("resolved", 0, 2).id
    assert event("detected", 0, 2).incident_id == event("resolved", 0, 9).incident_id
    assert event("detected", 0, 2).incident_id != event("detected", 30, 32).incident_id


def test_the_fingerprint_ignores_label_order_and_depends_on_the_rule() -> None:
    reordered = dict(reversed(list(LABELS.items())))
    assert series_fingerprint("queue", reordered) == KEY.fingerprint
    assert series_fingerprint("other", LABELS) != KEY.fingerprint


def test_event_labels_and_fields() -> None:
    detected = event("detected", 0, 2).data
    assert isinstance(detected, AnomalyDetected)
    assert detected.labels == {"service": "worker", "instance": "a:9100", "severity": "page"}
    assert (detected.service, detected.severity, detected.origin) == ("worker", "page", "detector")
    assert event("detected", 0, 2).incident_id == incident_id_for("queue", KEY.fingerprint, T)


def test_the_fold_keeps_what_is_open_and_nothing_else() -> None:
    assert fold_open_episodes([event("detected", 0, 2)])[KEY].starts_at == T
    assert fold_open_episodes([event("detected", 0, 2), event("resolved", 0, 9)]) == {}
    again = fold_open_episodes([event("detected", 0, 2), event("resolved", 0, 9),
                                event("detected", 30, 32)])  # fmt: skip
    assert again[KEY].starts_at == T + timedelta(minutes=30)
    stale = fold_open_episodes([event("detected", 30, 32), event("resolved", 0, 9)])
    assert KEY in stale  # a resolve of an older episode does not close this one


def test_a_prediction_is_open_from_its_episode_start() -> None:
    state = fold_open_episodes([event("predicted", 5, 5)])[KEY]
    assert (state.starts_at, state.predicted, state.detected) == (
        T + timedelta(minutes=5), True, False,
    )  # fmt: skip
    escalated = fold_open_episodes([event("predicted", 5, 5), event("detected", 5, 9)])[KEY]
    assert escalated.predicted and escalated.detected


def test_anomalies_from_alertmanager_are_not_the_detectors() -> None:
    theirs = new_event(
        AnomalyDetected(origin="alertmanager", name="queue", fingerprint=KEY.fingerprint,
                        starts_at=T),
        incident_id="am-1", source="alertmanager",
    )  # fmt: skip
    assert fold_open_episodes([theirs]) == {}


async def test_open_episodes_are_read_back_from_the_stream(js: JetStreamContext) -> None:
    publisher = EventPublisher(js)
    await publisher.publish_many([event("detected", 0, 2), event("resolved", 0, 9),
                                  event("detected", 30, 32), event("predicted", 5, 5)])  # fmt: skip
    await publisher.publish(event("detected", 0, 2))  # a duplicate: dropped by JetStream
    states = await load_open_episodes(js)
    assert list(states) == [KEY]
    assert states[KEY].starts_at == T + timedelta(minutes=30)
    assert (await js.stream_info("VIGIL_EVENTS")).state.consumer_count == 0
    assert await load_open_episodes(js) == states
