"""Commands of /api/v1: each checked against the current state, then recorded as its fact."""

from __future__ import annotations

from fastapi import FastAPI


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
