"""The webhook's own counters, for Prometheus to scrape next to everything else Vigil exports."""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "vigil_webhook_requests", "Alertmanager notifications, by HTTP status answered",
            ["status"], registry=registry,
        )  # fmt: skip
        self.alerts = Counter(
            "vigil_webhook_alerts",
            "Alert events stored; alerts stored before (duplicate) or older than known (stale)",
            ["outcome"], registry=registry,
        )  # fmt: skip


@functools.cache
def webhook_metrics(registry: CollectorRegistry = REGISTRY) -> WebhookMetrics:
    """The registry's webhook counters, made once: an API started again in the same process
    (a supervised restart, or `vigil eval`'s one per scenario) counts on, instead of failing
    to register the same names twice."""
    return WebhookMetrics(registry)
