"""What the routes of /api/v1 are given (ApiContext), and the dependency that hands it over."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from api.auth import ApiToken


@dataclass(frozen=True)
class ApiContext:
    """What the API's queries, commands and page need besides the webhook's parts.

    `nc` reads the stream (timelines, live streams), asks the projector's SQL service (lists,
    SQL) and records commands; the page links PromQL to `prometheus_url`'s graph and Slack
    links to `base_url`."""

    nc: NATS
    tokens: list[ApiToken] = field(default_factory=list)
    base_url: str = "http://127.0.0.1:8080"
    prometheus_url: str | None = None
    sql_max_rows: int = 10_000
    sql_timeout: float = 30.0
    approval_expiry: timedelta = timedelta(minutes=30)
    slack_signing_secret: str | None = None
    # Set when the server is told to stop: live streams (SSE) end rather than hold it up.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    model: str = "builtin"  # recorded on the attempts /investigate opens (the responder's own)
    stream_replicas: int = 1  # of the pause switch's bucket, when the API makes it
    # The Slack user ids whose approve/reject clicks count; empty: nobody's (set it to use them).
    slack_approvers: frozenset[str] = frozenset()

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]
