"""A ToolContext as a worker builds it, for calling a tool directly in a test."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS

from responder.tools import ToolContext, ToolSettings


def tool_context(
    nc: NATS,
    now: datetime,
    *,
    onset: datetime | None = None,
    incident_id: str = "inc-now",
    **settings: Any,
) -> ToolContext:
    return ToolContext(
        incident_id=incident_id,
        now=now,
        onset=onset,
        js=nc.jetstream(),
        nc=nc,
        settings=ToolSettings(**settings),
    )
