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

from alertmanager.receiver import Accepted, Refused, check_token, read_bounded, receive

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
            body = await read_bounded(request.stream(), config.max_bytes, config.read_timeout)
        except ClientDisconnect:
            raise Refused(400, "the client went away before the body was read") from None
        accepted = await receive(
            body,
            state.publisher,
            state.alert_index,
            window=config.correlation_window,
            timeout=config.timeout,
            budget=config.event_budget,
        )
    except Refused as refused:
        metrics.requests.labels(str(refused.status)).inc()
        answer: dict[str, object] = {"detail": refused.message}
        if refused.accepted is not None:
            count(metrics, refused.accepted)
            answer |= refused.accepted.model_dump()
        return JSONResponse(answer, refused.status, headers=_headers(refused.status))
    metrics.requests.labels("200").inc()
    count(metrics, accepted)
    return Response(accepted.model_dump_json(), media_type="application/json")


def count(metrics: WebhookMetrics, accepted: Accepted) -> None:
    metrics.alerts.labels("stored").inc(accepted.stored)
    metrics.alerts.labels("duplicate").inc(accepted.duplicates)
    metrics.alerts.labels("stale").inc(accepted.stale)


def _headers(status: int) -> dict[str, str] | None:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 408:  # the rest of a stalled body must not be read as the next request
        return {"Connection": "close"}
    return None


def add_webhook_routes(app: FastAPI) -> None:
    app.add_route(PATH, alertmanager_webhook, methods=["POST"])
