"""The detector's own health, for Prometheus to scrape (and to alert on: a detector that
cannot query is a blind spot, not a quiet system)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class DetectorMetrics:
    """Counters of polls, failures, gaps and events, per rule, in the given registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.polls = Counter(
            "vigil_detector_polls", "Rule evaluations, by outcome (ok or a failure reason)",
            ["rule", "outcome"], registry=registry,
        )  # fmt: skip
        self.no_data = Counter(
            "vigil_detector_no_data",
            "Series or rules without a verdict: empty result, stale or NaN sample, short history",
            ["rule", "reason"], registry=registry,
        )  # fmt: skip
        self.events = Counter(
            "vigil_detector_events", "Events appended, by type",
            ["rule", "type"], registry=registry,
        )  # fmt: skip
        self.publish_failures = Counter(
            "vigil_detector_publish_failures",
            "Polls whose events JetStream did not acknowledge (retried on the next poll)",
            ["rule"], registry=registry,
        )  # fmt: skip
        self.open_episodes = Gauge(
            "vigil_detector_open_anomalies", "Series with an open anomaly (predicted or detected)",
            ["rule"], registry=registry,
        )  # fmt: skip
        self.query_seconds = Histogram(
            "vigil_detector_query_seconds", "Time Prometheus took to answer a rule's query",
            ["rule"], registry=registry,
        )  # fmt: skip

    def sample(self, name: str, **labels: str) -> float:
        """A sample's current value as a scrape would show it (0 if never set)."""
        return self.registry.get_sample_value(name, labels) or 0.0
