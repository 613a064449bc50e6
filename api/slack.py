"""POST /slack/interactions: approve and reject from Slack's buttons, signature verified."""

from __future__ import annotations

from fastapi import FastAPI


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
