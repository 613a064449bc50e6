"""POST /webhooks/alertmanager: parses the request, calls the receiver, returns its answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from alertmanager.receiver import Accepted, Refused, check_token, read_bounded, receive
from eventlog.publisher import EventPublisher

router = APIRouter()


@router.post("/webhooks/alertmanager", response_model=Accepted)
async def alertmanager_webhook(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Accepted | JSONResponse:
    state = request.app.state
    try:
        check_token(authorization, state.webhook_token)
        body = await read_bounded(request.stream(), state.webhook_max_bytes)
        publisher: EventPublisher = state.publisher
        return await receive(body, publisher)
    except Refused as refused:
        headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
        return JSONResponse({"detail": refused.message}, refused.status, headers=headers)
