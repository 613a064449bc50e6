"""Episode changes into events, with every id and time derived from the episode.

The incident comes from (rule, series, episode start) and the event id from that plus the
kind of change, and `occurred_at` is the time the fact became true rather than the time of
publishing: an event emitted again after a crash is the same event byte for byte, and
JetStream's duplicate window drops it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from detector.hysteresis import Change
from detector.rules import ForecastDetector, Rule, ThresholdDetector
from detector.verdicts import Verdict
from eventlog.envelope import Event, new_event
from eventlog.payloads import AnomalyDetected, AnomalyPredicted, AnomalyResolved

SOURCE = "detector"
INCIDENT_PREFIX = "det-"
EVENT_NAMESPACE = uuid.UUID("0f3c9a52-8d1e-4b7a-b6c4-2e9d7f1a5c38")  # Vigil's detector events


@dataclass(frozen=True)
class SeriesKey:
    """One series of one rule: what hysteresis state is kept for."""

    rule: str
    fingerprint: str


def series_fingerprint(rule_name: str, labels: dict[str, str]) -> str:
    """Stable id of a series under a rule: the rule name and the sorted labels, hashed."""
    text = json.dumps([rule_name, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _episode(rule_name: str, fingerprint: str, starts_at: datetime) -> str:
    return f"{rule_name}|{fingerprint}|{starts_at.timestamp():.6f}"


def incident_id_for(rule_name: str, fingerprint: str, starts_at: datetime) -> str:
    digest = hashlib.sha256(_episode(rule_name, fingerprint, starts_at).encode()).hexdigest()
    return INCIDENT_PREFIX + digest[:24]


def event_id_for(rule_name: str, fingerprint: str, starts_at: datetime, kind: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, f"{_episode(rule_name, fingerprint, starts_at)}|{kind}")


def event_labels(rule: Rule, series_labels: dict[str, str]) -> dict[str, str]:
    """The series' labels with the rule's on top, as Prometheus alerting rules do."""
    labels = {k: v for k, v in series_labels.items() if k != "__name__"}
    return labels | rule.labels


def change_event(
    rule: Rule,
    series_labels: dict[str, str],
    change: Change,
    verdict: Verdict,
    *,
    prometheus_url: str | None = None,
) -> Event:
    fingerprint = series_fingerprint(rule.name, series_labels)
    labels = event_labels(rule, series_labels)
    service = labels.get("service") or labels.get("job")
    severity = labels.get("severity")
    data: AnomalyDetected | AnomalyPredicted | AnomalyResolved
    if change.kind == "detected":
        data = AnomalyDetected(
            origin="detector", name=rule.name, fingerprint=fingerprint,
            starts_at=change.starts_at, labels=labels, service=service, severity=severity,
            value=verdict.value, annotations=_annotations(rule),
            generator_url=_graph_url(prometheus_url, rule.query),
        )  # fmt: skip
    elif change.kind == "predicted":
        spec = rule.detector
        assert isinstance(spec, ForecastDetector), "only a forecast predicts"
        assert verdict.value is not None and verdict.crossing_at is not None
        data = AnomalyPredicted(
            name=rule.name, fingerprint=fingerprint, labels=labels, service=service,
            severity=severity, current_value=verdict.value, threshold=spec.threshold,
            predicted_crossing_at=datetime.fromtimestamp(verdict.crossing_at, UTC),
            horizon_seconds=spec.horizon.total_seconds(),
        )  # fmt: skip
    else:
        data = AnomalyResolved(
            origin="detector", name=rule.name, fingerprint=fingerprint,
            starts_at=change.starts_at, ends_at=change.at, labels=labels, value=verdict.value,
        )  # fmt: skip
    return new_event(
        data,
        incident_id=incident_id_for(rule.name, fingerprint, change.starts_at),
        source=SOURCE,
        event_id=event_id_for(rule.name, fingerprint, change.starts_at, change.kind),
        occurred_at=change.at,
    )


def _annotations(rule: Rule) -> dict[str, str]:
    """The rule's query and detector; a fixed line too (`threshold`, `direction`), by which a
    remediation's verification can tell the series is healthy again."""
    notes = {"query": rule.query, "detector": rule.detector.kind}
    if isinstance(rule.detector, ThresholdDetector):
        notes |= {"threshold": repr(rule.detector.threshold), "direction": rule.detector.direction}
    return notes


def _graph_url(base: str | None, query: str) -> str | None:
    if not base:
        return None
    return f"{base.rstrip('/')}/graph?g0.expr={quote(query)}&g0.tab=0"
