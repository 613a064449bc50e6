"""Each detector on the real PromQL engine, walked minute by minute through planted history,
publishing to a real JetStream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from detector import Detector, DetectorMetrics, PrometheusSource, run_detector
from detector.rules import parse_rules
from eventlog.envelope import Event, parse_event
from eventlog.publisher import EventPublisher
from tests.daemons import free_port
from tests.detector import history
from tests.detector.history import minute
from tests.detector.prometheus_server import PrometheusServer
from tests.eventlog.stream_reading import stream_events
from vigil.broker import EmbeddedNats

pytestmark = pytest.mark.slow


def rule(name: str, query: str, detector: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "query": query, "labels": {"severity": "page"}, "interval": "1m",
            "detector": detector} | extra  # fmt: skip


def make(url: str, js: JetStreamContext, metrics: DetectorMetrics, *rules: dict) -> Detector:
    return Detector(parse_rules({"rules": list(rules)}), PrometheusSource(url),
                    EventPublisher(js), metrics)  # fmt: skip


async def walk(detector: Detector, first: int, last: int) -> list[tuple[int, Event]]:
    """Poll every minute from `first` to `last` inclusive; each event with its minute."""
    out = []
    for i in range(first, last + 1):
        out += [(i, e) for e in await detector.evaluate(minute(i))]
    return out


def types(events: list[tuple[int, Event]]) -> list[tuple[int, str, str]]:
    return [(i, e.type, e.data.labels.get("service", "")) for i, e in events]  # type: ignore[attr-defined]


SPIKE = "app_latency_seconds"
SPIKE_DETECTORS = [
    {"kind": "threshold", "threshold": 1.0},
    {"kind": "zscore", "window": "1h30s", "direction": "above"},  # not whole steps: 60 of them
    {"kind": "robust_zscore", "window": "1h", "direction": "above"},
    {"kind": "ewma", "window": "1h", "alpha": 0.05, "direction": "above"},
]


@pytest.mark.parametrize("spec", SPIKE_DETECTORS, ids=lambda s: s["kind"])
async def test_a_spike_fires_once_and_resolves_once(
    prometheus: PrometheusServer, js: JetStreamContext, metrics: DetectorMetrics, spec: dict
) -> None:
    detector = make(prometheus.url, js, metrics,
                    rule("latency", SPIKE, spec, for_polls=2, resolve_polls=3))  # fmt: skip
    seen = await walk(detector, 120, 175)
    assert types(seen) == [
        (history.SPIKE_FROM + 1, "AnomalyDetected", "checkout"),
        (history.SPIKE_TO + 2, "AnomalyResolved", "checkout"),
    ]
    detected, resolved = seen[0][1], seen[1][1]
    assert detected.data.starts_at == minute(history.SPIKE_FROM)  # type: ignore[attr-defined]
    assert detected.data.value == 2.0  # type: ignore[attr-defined]
    assert detected.data.severity == "page"  # type: ignore[attr-defined]
    # The fixed line of a threshold rule comes along: a remediation's verification reads it.
    line = {"threshold": "1.0", "direction": "above"} if spec["kind"] == "threshold" else {}
    assert detected.data.annotations == {"query": SPIKE, "detector": spec["kind"], **line}  # type: ignore[attr-defined]
    assert resolved.data.ends_at == minute(history.SPIKE_TO)  # type: ignore[attr-defined]
    assert resolved.incident_id == detected.incident_id
    assert [e.id for e in await stream_events(js)] == [detected.id, resolved.id]


async def test_a_climb_is_predicted_before_it_crosses(
    prometheus: PrometheusServer, js: JetStreamContext, metrics: DetectorMetrics
) -> None:
    forecast = {"kind": "forecast", "threshold": 0.9, "window": "30m", "horizon": "1h"}
    detector = make(prometheus.url, js, metrics,
                    rule("disk", "disk_used_ratio", forecast, for_polls=2))  # fmt: skip
    seen = await walk(detector, 100, 215)
    assert [t for _, t, _ in types(seen)] == ["AnomalyPredicted", "AnomalyDetected"]
    (when_predicted, predicted), (when_detected, detected) = seen
    crossing = history.CROSSING
    assert crossing - 60 <= when_predicted <= crossing - 55  # as soon as it is within 1h
    assert abs(predicted.data.predicted_crossing_at - minute(crossing)).total_seconds() <= 300  # type: ignore[attr-defined]
    assert predicted.data.threshold == 0.9  # type: ignore[attr-defined]
    assert predicted.data.horizon_seconds == 3600  # type: ignore[attr-defined]
    assert crossing <= when_detected <= crossing + 3
    assert detected.incident_id == predicted.incident_id  # one incident, escalated


async def test_a_flapping_series_fires_once_and_resolves_once(
    prometheus: PrometheusServer, js: JetStreamContext, metrics: DetectorMetrics
) -> None:
    threshold = {"kind": "threshold", "threshold": 100}
    detector = make(prometheus.url, js, metrics, rule("queue", "queue_depth", threshold))
    seen = await walk(detector, 90, 140)
    assert types(seen) == [(105, "AnomalyDetected", "worker"), (113, "AnomalyResolved", "worker")]
    assert seen[0][1].data.starts_at == minute(history.FLAP_STARTS)  # type: ignore[attr-defined]
    assert seen[1][1].data.ends_at == minute(history.FLAP_ENDS)  # type: ignore[attr-defined]


async def test_a_restart_does_not_fire_an_open_anomaly_again(
    prometheus: PrometheusServer, js: JetStreamContext, metrics: DetectorMetrics
) -> None:
    spike = rule("latency", SPIKE, {"kind": "threshold", "threshold": 1.0}, for_polls=2)
    first = make(prometheus.url, js, metrics, spike)
    assert [t for _, t, _ in types(await walk(first, 140, 153))] == ["AnomalyDetected"]

    again = await Detector.restored(js, first.rules, PrometheusSource(prometheus.url),
                                    DetectorMetrics(CollectorRegistry()))  # fmt: skip
    assert again.metrics.sample("vigil_detector_open_anomalies", rule="latency") == 1
    seen = await walk(again, 150, 170)  # the same minutes again, then on past the spike
    assert types(seen) == [(history.SPIKE_TO + 2, "AnomalyResolved", "checkout")]
    stored = await stream_events(js)
    assert [e.type for e in stored] == ["AnomalyDetected", "AnomalyResolved"]
    assert stored[1].data.starts_at == minute(history.SPIKE_FROM)  # type: ignore[attr-defined]


async def test_events_not_acknowledged_are_emitted_again_with_the_same_ids(
    prometheus: PrometheusServer,
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    metrics: DetectorMetrics,
) -> None:
    spike = rule("latency", SPIKE, {"kind": "threshold", "threshold": 1.0}, for_polls=2)
    rules = parse_rules({"rules": [spike]})
    source = PrometheusSource(prometheus.url)
    first = Detector(rules, source, EventPublisher(js, ack_timeout=0.5), metrics)
    assert await walk(first, 140, 150) == []  # minute 150: the first breach
    await nats_server.stop()
    assert await first.evaluate(minute(151)) == []  # would fire, but nothing acknowledged it
    assert metrics.sample("vigil_detector_publish_failures_total", rule="latency") == 1
    await nats_server.start()

    # The state is as the failed poll left it, so polling the minute again is what the next
    # poll does; each try is bounded by the ack timeout while the client reconnects.
    for _ in range(30):
        if again := await first.evaluate(minute(151)):
            break
    assert types(list(enumerate(again, 151))) == [(151, "AnomalyDetected", "checkout")]
    assert await walk(first, 152, 153) == []
    stored = await stream_events(js)  # the first try, buffered while down, may have gone too
    assert [e.id for e in stored] == [again[0].id]


async def test_what_prometheus_cannot_answer_is_counted_never_an_event(
    prometheus: PrometheusServer, js: JetStreamContext, metrics: DetectorMetrics
) -> None:
    low = {"kind": "threshold", "threshold": -1.0}  # any real value would breach it
    zscore = {"kind": "zscore", "window": "1h", "z": 0.001}  # so would any move
    early = make(
        prometheus.url, js, metrics,
        rule("nan", "broken_ratio", low, for_polls=1),
        rule("empty", "no_such_metric", low, for_polls=1),
        rule("bad-query", "sum(", low, for_polls=1),
        rule("too-early", SPIKE, zscore, for_polls=1),  # no history before T0
    )  # fmt: skip
    assert await walk(early, 0, 2) == []
    late = make(
        prometheus.url, js, metrics,
        rule("ended", SPIKE, low, for_polls=1),
        rule("ended-window", SPIKE, zscore, for_polls=1),  # samples, but none at `at`
    )  # fmt: skip
    assert await walk(late, history.MINUTES + 60, history.MINUTES + 60) == []
    nowhere = make(f"http://127.0.0.1:{free_port()}", js, metrics,
                   rule("unreachable", SPIKE, low, for_polls=1))  # fmt: skip
    assert await walk(nowhere, 150, 151) == []

    expected = {
        ("no_data", "nan", "nan"): 3,
        ("no_data", "empty", "empty"): 3,
        ("polls", "bad-query", "query_error"): 3,
        ("no_data", "too-early", "short_history"): 6,  # two series, three polls
        ("no_data", "ended", "empty"): 1,
        ("no_data", "ended-window", "stale"): 2,
        ("polls", "unreachable", "unreachable"): 2,
    }
    for (counter, name, why), n in expected.items():
        key = "reason" if counter == "no_data" else "outcome"
        assert metrics.sample(f"vigil_detector_{counter}_total", rule=name, **{key: why}) == n
    assert (await js.stream_info("VIGIL_EVENTS")).state.messages == 0


async def test_run_detector_polls_on_its_interval_until_stopped(
    prometheus: PrometheusServer, js: JetStreamContext
) -> None:
    registry = CollectorRegistry()
    rules = parse_rules({"rules": [
        rule("always", "vector(5)", {"kind": "threshold", "threshold": 1}, interval="1s",
             for_polls=1),
        rule("broken", "sum(", {"kind": "threshold", "threshold": 1}, interval="1s"),
    ]})  # fmt: skip
    sub = await js.subscribe("vigil.evt.*.AnomalyDetected")
    stop = asyncio.Event()
    task = asyncio.create_task(run_detector(js, prometheus.url, rules, stop, registry=registry))
    event = parse_event((await sub.next_msg(timeout=10)).data)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert event.source == "detector" and event.data.name == "always"  # type: ignore[attr-defined]
    assert event.occurred_at.microsecond == 0
    failed = registry.get_sample_value(
        "vigil_detector_polls_total", {"rule": "broken", "outcome": "query_error"}
    )
    assert failed and failed >= 1
