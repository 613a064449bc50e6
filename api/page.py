"""GET /: the incident timeline page (plain HTML, CSS and JS served from `api/static/`; no
build step, nothing from a CDN), and GET /api/v1/config: what the page needs to know of this
API besides its data (the Prometheus to link PromQL to).

The page and its files are served without a token: they hold no data. Everything the page
shows comes from /api/v1, under the caller's bearer token (asked once, kept in the browser's
localStorage) or, with no token configured, as a loopback client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api.auth import Reader
from api.context import Context
from api.problems import problem

STATIC = Path(__file__).parent / "static"
# The page runs only its own files: a value in an event that got into the DOM as markup
# could not load or run a script, nor send data elsewhere.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class PageConfig(BaseModel):
    """What the page links to: `prometheus_url` (None: PromQL is shown, not linked) and
    `base_url`, this API's public address."""

    prometheus_url: str | None
    base_url: str


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
    index = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(index, headers=HEADERS)

    refused = {
        401: problem("no bearer token, or one not configured"),
        403: problem("a remote client and no tokens configured"),
    }

    @app.get("/api/v1/config", tags=["page"], responses=refused)
    def config(context: Context, principal: Reader) -> PageConfig:
        """What the timeline page links to: Prometheus's address and this API's own."""
        prometheus = context.prometheus_url.rstrip("/") if context.prometheus_url else None
        return PageConfig(prometheus_url=prometheus, base_url=context.base_url)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
