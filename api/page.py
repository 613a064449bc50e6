"""GET /: the incident timeline page (plain HTML, CSS and JS; no build step)."""

from __future__ import annotations

from fastapi import FastAPI


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
