"""Wiring: the broker (embedded or given), the streams, and the roles that exist so far."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import uvicorn
import uvloop
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from alertmanager.alert_events import EVENT_BUDGET
from alertmanager.alert_index import MAX_RECORD_BYTES, AlertIndex
from api.app import ApiContext, WebhookConfig, create_app
from detector.poller import run_detector
from detector.rules import RuleSet
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from eventlog.sql_service import serve_sql, sql_subject
from eventlog.store import ProjectionStore
from eventlog.stream import connect, ensure_streams
from responder.progress import Limits
from responder.tools import ToolModuleError, ToolRegistry, ToolSettings, load_tools
from responder.tools.config_file import ConfigFileError
from responder.worker import run_workers
from vigil.broker import EmbeddedNats, die_with_parent
from vigil.http_protocol import BoundedHeadersProtocol
from vigil.runtime import clear_runtime, write_runtime
from vigil.settings import Settings
from vigil.supervisor import RoleFailed

if TYPE_CHECKING:  # pydantic-ai takes a second to import: `vigil sql` never needs it
    from pydantic_ai.models import Model

    from responder.notify.notifier import Channel
    from responder.saga.catalog import Catalog
    from responder.saga.policy import Policy

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_EVENT_BUDGET = 16 * 1024


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop: the webhook's req/s nearly double over the default loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[tuple[str, EmbeddedNats | None]]:
    """The configured NATS, or an embedded nats-server in the data dir while the block runs."""
    if settings.nats_url:
        yield settings.nats_url, None
        return
    server = EmbeddedNats(
        store_dir=settings.nats_store_dir,
        port=settings.nats_port,
        sync_always=settings.nats_sync_always,
    )
    await server.start()
    try:
        yield server.url, server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def bus(settings: Settings, url: str, name: str) -> AsyncIterator[NATS]:
    """A connection with Vigil's streams in place."""
    nc = await connect(url, name=name)
    try:
        await ensure_streams(
            nc.jetstream(),
            replicas=settings.stream_replicas,
            duplicate_window=settings.duplicate_window_seconds,
        )
        yield nc
    finally:
        try:
            if nc.is_connected:
                await nc.drain()
        except (NatsError, OSError, RuntimeError) as exc:  # uvloop: RuntimeError, not OSError
            log.warning("could not drain the NATS connection (%s); closing it", exc)
        finally:
            # Broker gone: nothing in flight can be delivered anyway. nats-py still writes
            # what is pending, which uvloop refuses on a closed transport (RuntimeError).
            with contextlib.suppress(RuntimeError):
                await nc.close()


async def run_projector(
    settings: Settings,
    url: str,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Projector], None],
    owner: int | None = None,
) -> None:
    """The projector and the SQL service that answers for its file; `owner` is the pid of the
    `vigil up` this runs for, as its child."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with bus(settings, url, "vigil-projector") as nc:
        try:
            store = ProjectionStore(settings.db_path)
        except duckdb.Error as exc:  # e.g. locked by a reader: one line, not a traceback
            message = " ".join(str(exc).split())
            raise RoleFailed(f"cannot open {settings.db_path}: {message}") from None
        try:
            projector = Projector(nc.jetstream(), store, batch=settings.projector_batch)
            service = await serve_sql(
                nc,
                store.con,
                store.db_id,
                timeout=settings.sql_timeout_seconds,
                max_rows=settings.sql_max_rows,
            )
            subject = sql_subject(store.db_id)
            write_runtime(settings.data_dir, nats_url=url, sql_subject=subject, pid=owner)
            on_ready(projector)
            try:
                await projector.run(stop)
            finally:
                clear_runtime(settings.data_dir, owner)
                await service.stop()
        finally:
            store.close()


# Set by `vigil up` for its projector child: the pid holding the data dir's lock.
HELD_BY_ENV = "_VIGIL_DATA_DIR_HELD_BY"
PROJECTOR_READY = "projecting"


async def run_projector_process(
    settings: Settings, url: str, stop: asyncio.Event, *, on_ready: Callable[[], None]
) -> None:
    """The projector as a child process (`vigil projector`), so its folds and DuckDB writes do
    not share the HTTP API's GIL: the webhook takes 1.6 times the load it would beside them
    in one process (docs/benchmarks.md). It dies with us (PR_SET_PDEATHSIG)."""
    env = {**os.environ, "VIGIL_NATS_URL": url, "VIGIL_DATA_DIR": str(settings.data_dir)}
    env[HELD_BY_ENV] = str(os.getpid())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "projector",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
    )  # fmt: skip
    child = _ChildOutput(proc)
    exited = asyncio.create_task(proc.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({child.ready, exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return
        if not child.ready.done():
            await child.drained()
            raise RoleFailed(f"the projector did not start: {child.last_words(exited.result())}")
        child.pass_through()  # its warnings from before it was ready too
        on_ready()
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            await child.drained()
            raise RoleFailed(f"the projector process exited: {child.last_words(exited.result())}")
    finally:
        stopping.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                log.error("the projector did not stop within 30 s of SIGTERM: killed")
                proc.kill()
                await proc.wait()
        await child.drained()
        if stop.is_set() and proc.returncode not in (0, -signal.SIGTERM):  # a stop gone wrong
            log.warning("the projector ended with code %s", proc.returncode)


class _ChildOutput:
    """A child's stdout (read to the end: it says when it is ready) and stderr (kept until it
    is ready, for a one-line error if it never is; then passed on to ours)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._said: list[str] = []
        self._passing = False
        self._pumps = [
            asyncio.create_task(self._out(proc.stdout)),
            asyncio.create_task(self._err(proc.stderr)),
        ]

    async def _out(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            if PROJECTOR_READY in raw.decode(errors="replace") and not self.ready.done():
                self.ready.set_result(None)

    async def _err(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            if self._passing:
                sys.stderr.write(line + "\n")
            else:
                self._said.append(line)

    def pass_through(self) -> None:
        self._passing = True
        for line in self._said:
            sys.stderr.write(line + "\n")
        self._said.clear()

    def last_words(self, code: int) -> str:
        said = [line for line in self._said if line.strip()]
        return said[-1].removeprefix("vigil: ") if said else f"exit code {code}"

    async def drained(self) -> None:
        """Everything the child wrote has been read (its pipes close when it exits)."""
        await asyncio.wait(self._pumps, timeout=5)  # (a grandchild could hold them open)


class HttpPortBusy(Exception):
    """The HTTP address cannot be bound; the message says which and what to set."""


def bind_http(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything is announced (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.http_host, settings.http_port))
    except OSError as exc:
        sock.close()
        raise HttpPortBusy(
            f"cannot listen on {settings.http_host}:{settings.http_port}: "
            f"{exc.strerror or exc}; set VIGIL_HTTP_HOST / VIGIL_HTTP_PORT"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def run_api(
    settings: Settings,
    url: str,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], None],
) -> None:
    """The HTTP API (the Alertmanager webhook, /metrics) on `sock` until `stop`; `sock` is left
    open, so the API can be started again on it."""
    async with bus(settings, url, "vigil-api") as nc:
        js = nc.jetstream()
        index = await AlertIndex.open(
            js,
            replicas=settings.stream_replicas,
            ttl=settings.alert_memory_days * 86400,
            follow=nc,
            max_record_bytes=min(MAX_RECORD_BYTES, nc.max_payload - 16 * 1024),
        )
        token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
        app = create_app(
            EventPublisher(js, ack_timeout=settings.webhook_timeout_seconds),
            index,
            WebhookConfig(
                token=token,
                max_bytes=settings.webhook_max_bytes,
                correlation_window=timedelta(seconds=settings.correlation_window_seconds),
                timeout=settings.webhook_timeout_seconds,
                read_timeout=settings.webhook_read_timeout_seconds,
                event_budget=event_budget(nc.max_payload),
            ),
            context=api_context(settings, nc, sock, stopping=stop),
        )
        # A request may wait out the timeout three times (index, decision, publish) before 503.
        grace = 3 * settings.webhook_timeout_seconds
        # uvicorn closes the socket it served when it stops: it gets a duplicate, so `sock`
        # stays bound and listening for a restart (connections wait in its backlog meanwhile).
        try:
            with sock.dup() as serving:
                await serve_http(
                    app, serving, stop, on_ready=on_ready, grace=grace,
                    header_timeout=settings.webhook_read_timeout_seconds,
                )  # fmt: skip
        finally:
            await index.close()


def api_context(
    settings: Settings,
    nc: NATS,
    sock: socket.socket | None = None,
    *,
    stopping: asyncio.Event | None = None,
) -> ApiContext:
    """What /api/v1, the page and Slack's buttons are given. Links point to
    VIGIL_PUBLIC_URL, else to the address `sock` is bound to (a free port's real number).
    `stopping`, once set, ends the live streams (SSE): the server stops without waiting."""
    secret = settings.slack_signing_secret
    return ApiContext(
        nc=nc,
        tokens=settings.api_tokens,
        base_url=settings.api_base_url if settings.public_url or sock is None else _url_of(sock),
        prometheus_url=settings.prometheus_url,
        sql_max_rows=settings.sql_max_rows,
        sql_timeout=settings.sql_timeout_seconds,
        approval_expiry=approval_expiry(settings),
        stopping=stopping or asyncio.Event(),
        slack_signing_secret=secret.get_secret_value() if secret else None,
        slack_approvers=frozenset(settings.slack_approvers),
        model=settings.model,
        stream_replicas=settings.stream_replicas,
    )


def approval_expiry(settings: Settings) -> timedelta:
    """How long a plan waits for approval: the policy file's (VIGIL_POLICY), else the default
    policy's; a policy that does not load fails here, in one line, as `vigil up` would."""
    from responder.saga.policy import load_policy

    try:
        return load_policy(settings.policy).approval_expiry
    except ConfigFileError as exc:
        raise RoleFailed(str(exc)) from None


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def event_budget(max_payload: int) -> int:
    """Bytes one alert's event may take: Vigil's budget, or less on a NATS server whose
    max_payload is smaller than its default 1 MB (headers and the envelope need room too)."""
    budget = min(EVENT_BUDGET, max_payload - 8192)
    if budget < MIN_EVENT_BUDGET:
        raise RoleFailed(
            f"the NATS server's max_payload is {max_payload} bytes; Vigil needs at least "
            f"{MIN_EVENT_BUDGET + 8192} (NATS's default is 1048576)"
        )
    return budget


async def run_detector_role(
    settings: Settings,
    url: str,
    rules: RuleSet,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], None],
) -> None:
    """The Prometheus poller, publishing what it finds."""
    assert settings.prometheus_url
    async with bus(settings, url, "vigil-detector") as nc:
        on_ready()
        await run_detector(nc.jetstream(), settings.prometheus_url, rules, stop)


def tool_settings(settings: Settings) -> ToolSettings:
    """What the tools are told of the deployment."""
    return ToolSettings(
        prometheus_url=settings.prometheus_url,
        alertmanager_url=settings.alertmanager_url,
        topology_file=settings.topology,
        signals_file=settings.signals,
    )


def worker_tools(settings: Settings) -> ToolRegistry:
    """The built-in tools and those of VIGIL_TOOL_MODULES; RoleFailed names a module that
    cannot give its tools."""
    try:
        return load_tools(settings.tool_modules)
    except ToolModuleError as exc:
        raise RoleFailed(f"{exc} (VIGIL_TOOL_MODULES)") from None


async def run_worker_role(
    settings: Settings, url: str, stop: asyncio.Event, *, on_ready: Callable[[], None]
) -> None:
    """The tool workers: run what investigations ask for, record the outcomes."""
    registry = worker_tools(settings)
    async with bus(settings, url, "vigil-worker") as nc:
        await _when_ready(
            lambda ready: run_workers(
                nc.jetstream(), registry, stop, nc=nc, ready=ready,
                settings=tool_settings(settings), concurrency=settings.worker_concurrency,
            ),
            on_ready,
        )  # fmt: skip


def investigation_limits(settings: Settings) -> Limits:
    return Limits(
        model_requests=settings.investigation_max_model_requests,
        tool_calls=settings.investigation_max_tool_calls,
        tokens=settings.investigation_max_tokens,
        seconds=settings.investigation_max_seconds,
        tool_timeout_seconds=settings.tool_timeout_seconds,
    )


def investigation_model(settings: Settings) -> Model:
    """The configured model (ValueError, one line, for a string pydantic-ai does not know)."""
    from responder.models import model_for  # pydantic-ai: imported by the roles that use it

    key = settings.model_api_key.get_secret_value() if settings.model_api_key else None
    return model_for(settings.model, base_url=settings.model_base_url, api_key=key)


async def run_responder_role(
    settings: Settings, url: str, stop: asyncio.Event, *, on_ready: Callable[[], None]
) -> None:
    """The investigator: every anomaly's incident investigated, turn by turn."""
    from responder.agent import build_agent
    from responder.investigator import Investigator, run_investigator

    agent = build_agent(investigation_model(settings), worker_tools(settings))
    async with bus(settings, url, "vigil-responder") as nc:
        investigator = Investigator(
            nc.jetstream(), agent, settings.model, limits=investigation_limits(settings)
        )
        await _when_ready(
            lambda ready: run_investigator(
                investigator, stop, concurrency=settings.responder_concurrency, ready=ready
            ),
            on_ready,
        )


async def run_saga_role(
    settings: Settings, url: str, stop: asyncio.Event, *, on_ready: Callable[[], None]
) -> None:
    """The saga orchestrator: remediation plans run, verified, compensated."""
    from responder.saga.lease import Leases, lease_bucket
    from responder.saga.orchestrator import Orchestrator, run_orchestrator
    from responder.saga.pause import control_bucket

    catalog, policy = remediation_config(settings)
    if settings.remediation_paused:
        policy = policy.model_copy(update={"paused": True})
    async with bus(settings, url, "vigil-saga") as nc:
        js = nc.jetstream()
        replicas = settings.stream_replicas
        leases = Leases(await lease_bucket(js, replicas=replicas), term=settings.saga_lease_seconds)
        orchestrator = Orchestrator(
            js, catalog, policy, prometheus_url=settings.prometheus_url,
            control=await control_bucket(js, replicas=replicas), leases=leases,
        )  # fmt: skip
        await _when_ready(lambda ready: run_orchestrator(orchestrator, stop, ready=ready), on_ready)


def notify_channels(settings: Settings, base_url: str | None = None) -> list[Channel]:
    """The channels configured: Slack's Web API (bot token + channel) or, instead, a Slack
    incoming webhook; and the generic JSON webhook. Empty: no notifier to run. Links point
    to `base_url` (default: VIGIL_PUBLIC_URL, else VIGIL_HTTP_HOST:VIGIL_HTTP_PORT)."""
    from responder.notify.notifier import SlackThreads, SlackWebhookNotices, WebhookNotices
    from responder.notify.slack import SlackApi
    from responder.notify.webhooks import JsonWebhook, SlackIncomingWebhook

    base = base_url or settings.api_base_url
    channels: list[Channel] = []
    if settings.slack_bot_token is not None:
        if not settings.slack_channel:
            raise RoleFailed("VIGIL_SLACK_BOT_TOKEN is set but not VIGIL_SLACK_CHANNEL (C...)")
        if settings.slack_webhook_url is not None:
            log.warning("both a Slack bot token and VIGIL_SLACK_WEBHOOK_URL: using the bot")
        api = SlackApi(settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url)
        channels.append(SlackThreads(api, settings.slack_channel, base))
    elif settings.slack_webhook_url is not None:
        hook = SlackIncomingWebhook(settings.slack_webhook_url.get_secret_value())
        channels.append(SlackWebhookNotices(hook, base))
    if settings.notify_webhook_url:
        token = settings.notify_webhook_token
        json_hook = JsonWebhook(
            settings.notify_webhook_url, token.get_secret_value() if token else None
        )
        channels.append(WebhookNotices(json_hook, base))
    return channels


async def run_notifier_role(
    settings: Settings,
    url: str,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], None],
    sock: socket.socket | None = None,
) -> None:
    """The notifier: each milestone of an incident told on every configured channel. With
    `sock` (`vigil up`'s API), links point to its real address unless VIGIL_PUBLIC_URL."""
    from responder.notify.notifier import run_notifier

    linked = None if settings.public_url or sock is None else _url_of(sock)
    channels = notify_channels(settings, linked)
    if not channels:
        raise RoleFailed(
            "no notification channel: set VIGIL_SLACK_BOT_TOKEN and VIGIL_SLACK_CHANNEL, "
            "VIGIL_SLACK_WEBHOOK_URL, or VIGIL_NOTIFY_WEBHOOK_URL"
        )
    async with bus(settings, url, "vigil-notifier") as nc:
        await _when_ready(
            lambda ready: run_notifier(nc.jetstream(), channels, stop, ready=ready), on_ready
        )


def remediation_config(settings: Settings) -> tuple[Catalog, Policy]:
    """The catalog and the policy; RoleFailed (one line) when either is missing or wrong."""
    from responder.saga.catalog import load_catalog
    from responder.saga.policy import load_policy

    if settings.actions is None:
        raise RoleFailed("no action catalog: set VIGIL_ACTIONS (sample: deploy/actions.yaml)")
    try:
        return load_catalog(settings.actions), load_policy(settings.policy)
    except ConfigFileError as exc:
        raise RoleFailed(str(exc)) from None


async def _when_ready(
    start: Callable[[asyncio.Event], Coroutine[Any, Any, None]], on_ready: Callable[[], None]
) -> None:
    """Run a consumer; `on_ready` once its durable exists (not if it fails first)."""
    ready = asyncio.Event()
    running = asyncio.create_task(start(ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if ready.is_set():
        on_ready()
    await running


async def serve_http(
    app: FastAPI,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], None],
    grace: float = 5.0,
    header_timeout: float = 30.0,
) -> None:
    """uvicorn on `sock` until `stop`, then requests in flight get `grace` seconds to end;
    a connection whose request headers take longer than `header_timeout` is closed."""
    config = uvicorn.Config(
        app,
        loop="none",  # ours: uvloop, set by the CLI
        http=BoundedHeadersProtocol.bounded(header_timeout),
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=grace + 1,  # then uvicorn cancels what is still running
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    on_ready()
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True  # finish requests in flight, then close
    stopping.cancel()
    await serving
    if not stop.is_set():
        raise RoleFailed("the HTTP server stopped on its own; see the log above")


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: `vigil` stops every role on SIGINT/SIGTERM."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
