"""POST /webhooks/alertmanager: parses the request, calls the receiver, returns its answer.

A plain Starlette route, not a FastAPI endpoint: FastAPI's dependency and response-model
machinery cost ~80 µs a request, a quarter of a one-alert notification's budget (see
docs/benchmarks.md). The answer's shape is still the `Accepted` model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from alertmanager.receiver import Refused, check_token, read_bounded, receive

if TYPE_CHECKING:
    from alertmanager.metrics import WebhookMetrics
    from api.app import WebhookConfig

PATH = "/webhooks/alertmanager"


async def alertmanager_webhook(request: Request) -> Response:
    state = request.app.state
    config: WebhookConfig = state.webhook
    metrics: WebhookMetrics = state.webhook_metrics
    try:
        check_token(request.headers.get("authorization"), config.token)
        try:
            body = await read_bounded(request.stream(), config.max_bytes)
        except ClientDisconnect:
            raise Refused(400, "the client went away before the body was read") from None
        accepted = await receive(
            body,
            state.publisher,
            state.alert_index,
            window=config.correlation_window,
            timeout=config.timeout,
        )
    except Refused as refused:
        metrics.requests.labels(str(refused.status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
        return JSONResponse({"detail": refused.message}, refused.status, headers=headers)
    metrics.requests.labels("200").inc()
    metrics.alerts.labels("stored").inc(accepted.stored)
    metrics.alerts.labels("duplicate").inc(accepted.duplicates)
    return Response(accepted.model_dump_json(), media_type="application/json")


def add_webhook_routes(app: FastAPI) -> None:
    app.add_route(PATH, alertmanager_webhook, methods=["POST"])
