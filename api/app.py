"""The HTTP API: built from what it serves (a publisher, settings), no globals."""

from __future__ import annotations

from fastapi import FastAPI

from alertmanager.receiver import DEFAULT_MAX_BYTES
from api.webhooks import router as webhooks
from eventlog.publisher import EventPublisher


def create_app(
    publisher: EventPublisher,
    *,
    webhook_token: str | None,
    webhook_max_bytes: int = DEFAULT_MAX_BYTES,
) -> FastAPI:
    app = FastAPI(title="Vigil", version="0.1.0")
    app.state.publisher = publisher
    app.state.webhook_token = webhook_token
    app.state.webhook_max_bytes = webhook_max_bytes
    app.include_router(webhooks)
    return app
