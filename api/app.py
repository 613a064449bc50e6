"""The HTTP API: built from what it serves (a publisher, the alert index, settings), no globals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from alertmanager.alert_events import EVENT_BUDGET
from alertmanager.alert_index import AlertIndex
from alertmanager.metrics import webhook_metrics
from alertmanager.receiver import DEFAULT_MAX_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_WINDOW
from api import commands, ops, page, problems, queries, slack
from api.auth import Tokens
from api.context import ApiContext
from api.webhooks import add_webhook_routes
from eventlog.publisher import EventPublisher


@dataclass(frozen=True)
class WebhookConfig:
    token: str | None
    max_bytes: int = DEFAULT_MAX_BYTES
    correlation_window: timedelta = DEFAULT_WINDOW
    timeout: float = 5.0
    read_timeout: float = DEFAULT_READ_TIMEOUT  # the whole body, seconds
    event_budget: int = EVENT_BUDGET  # bytes one alert's event may take (NATS max_payload)


def create_app(
    publisher: EventPublisher,
    index: AlertIndex,
    webhook: WebhookConfig,
    *,
    registry: CollectorRegistry = REGISTRY,
    context: ApiContext | None = None,
) -> FastAPI:
    """The webhook and /metrics always; with `context`, the API of /api/v1, the page at `/`
    and Slack's interactions too."""
    app = FastAPI(title="Vigil", version="0.1.0")
    app.state.publisher = publisher
    app.state.alert_index = index
    app.state.webhook = webhook
    app.state.webhook_metrics = webhook_metrics(registry)
    add_webhook_routes(app)
    add_metrics(app, registry)
    if context is not None:
        app.state.context = context
        app.state.tokens = Tokens(context.tokens)
        problems.install(app)
        queries.add_routes(app)
        commands.add_routes(app)
        ops.add_routes(app, registry)
        slack.add_routes(app)
        page.add_routes(app)
    return app


def add_metrics(app: FastAPI, registry: CollectorRegistry = REGISTRY) -> None:
    """GET /metrics: Vigil's own health (webhook, detector, ...) for Prometheus to scrape."""

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
