"""POST /webhooks/alertmanager: parses the request, calls the receiver, returns its answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from alertmanager.receiver import Accepted, Refused, check_token, read_bounded, receive

if TYPE_CHECKING:
    from alertmanager.metrics import WebhookMetrics
    from api.app import WebhookConfig

router = APIRouter()


@router.post("/webhooks/alertmanager", response_model=Accepted)
async def alertmanager_webhook(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Accepted | JSONResponse:
    state = request.app.state
    config: WebhookConfig = state.webhook
    metrics: WebhookMetrics = state.webhook_metrics
    try:
        check_token(authorization, config.token)
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
    return accepted
