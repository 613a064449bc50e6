"""The timeline page's world in a test: the API served by uvicorn on a free loopback port, the
projector and its SQL service (the incident list), the saga orchestrator under a policy, and
headless chromium (Debian's) driven by Playwright. All real; started and stopped per test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from prometheus_client import CollectorRegistry

from alertmanager.alert_index import AlertIndex
from api.app import WebhookConfig, create_app
from api.auth import ApiToken
from api.context import ApiContext
from eventlog.payloads.investigation import CATEGORIES
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from responder.saga.catalog import Catalog
from responder.saga.orchestrator import Orchestrator, Timing, run_orchestrator
from responder.saga.policy import Policy, ServicePolicy
from tests.eventlog.projecting import projecting_with_sql
from tests.responder.saga_target import Deployer, catalog_for

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 860}
OPERATE = ApiToken.parse("alice:operate:alice-operates-0123456789")
READ = ApiToken.parse("rita:read:rita-only-reads-0123456789")


def secret(token: ApiToken) -> str:
    return token.token.get_secret_value()


def listening() -> socket.socket:
    """A listening socket on a free loopback port, to serve the API on again after a stop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def api_served(
    nc: NATS,
    *,
    tokens: list[ApiToken] | None = None,
    prometheus_url: str | None = None,
    sock: socket.socket | None = None,
) -> AsyncIterator[str]:
    """The whole API (webhook, /api/v1, the page) on `http://127.0.0.1:PORT`; on `sock` when
    given, which stays open afterwards (as `vigil up` keeps its socket across a restart of its
    API: clients wait in the backlog meanwhile)."""
    js = nc.jetstream()
    index = await AlertIndex.open(js)
    context = ApiContext(nc=nc, tokens=tokens or [], prometheus_url=prometheus_url)
    app = create_app(
        EventPublisher(js), index, WebhookConfig(token=None), registry=CollectorRegistry(),
        context=context,
    )  # fmt: skip
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)  # what serve() does before startup()
    serving = sock.dup() if sock is not None else listening()
    await server.startup(sockets=[serving])
    task = asyncio.create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{serving.getsockname()[1]}"
    finally:
        context.stopping.set()  # the live streams end, so the server can stop
        server.should_exit = True
        await task
        await server.shutdown(sockets=[serving])
        serving.close()
        await index.close()


@contextlib.asynccontextmanager
async def read_model(nc: NATS, db_path: Path) -> AsyncIterator[Projector]:
    """The projector following the stream into a DuckDB file, and the SQL service over it that
    the API's queries ask (as `vigil projector` runs them)."""
    async with projecting_with_sql(nc, db_path, batch=2000, fetch_timeout=0.2) as projector:
        async with asyncio.timeout(20):
            await projector.following.wait()
        yield projector


def approval_policy(service: str = "checkout") -> Policy:
    """A low-risk action on `service` waits for a person's approval."""
    return Policy(services={service: ServicePolicy(low="approval")}, min_confidence_to_propose=0.5)


@contextlib.asynccontextmanager
async def orchestrating(js: JetStreamContext, deployer: Deployer) -> AsyncIterator[Orchestrator]:
    """The saga orchestrator: the catalog's `note` (a noop) is the remedy of every root cause,
    so a confident report proposes it, and the policy makes it wait for an approval."""
    catalog: dict[str, Any] = catalog_for(deployer.url)
    catalog["actions"][3]["remedies"] = list(CATEGORIES)
    orchestrator = Orchestrator(
        js, Catalog.model_validate(catalog), approval_policy(), timing=Timing(backoff=0.01)
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_orchestrator(orchestrator, stop, ready=ready))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        yield orchestrator
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium, headless (Playwright's own browser builds cannot be downloaded)."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Tab:
    """A page in its own browser context (its own localStorage), and the errors it threw."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, browser: Browser, url: str) -> Tab:
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        tab = cls(context, await context.new_page())
        await tab.page.goto(url)
        return tab

    async def give_token(self, token: ApiToken) -> None:
        """Answer the page's question for a token, as a person would."""
        dialog = self.page.get_by_role("dialog", name="API token")
        await dialog.get_by_label("Token").fill(secret(token))
        await dialog.get_by_role("button", name="Use this token").click()

    async def close(self) -> None:
        await self.context.close()
