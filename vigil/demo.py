"""`vigil demo`: a real incident, end to end, told as the pipeline lives it.

It runs the embedded NATS and every role of `vigil up` (the same roles, the same supervisor), a
real Prometheus and Alertmanager (Debian's), and the demo shop (vigil/shop.py) with traffic.
After a baseline of healthy traffic it deploys a harmless release of a service off the path,
then a broken release of checkout (each recorded as `ChangeRecorded`, as a CD pipeline would),
through the shop's admin endpoint. What follows is nobody's script: Prometheus sees the errors
and fires the alert rules of deploy/demo/alerts.yml, Alertmanager notifies Vigil's webhook,
the responder investigates with tools that query that Prometheus. The demo only tells what
appears on the stream (an ordered consumer from where the demo began), and ends once every
incident it saw opened has its report, or stays up until Ctrl-C when asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape

from eventlog.envelope import Event, MalformedEvent, new_event, parse_event
from eventlog.payloads import (
    AnomalyDetected,
    ChangeRecorded,
    InvestigationStarted,
    RootCauseConcluded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from vigil.app import broker, bus
from vigil.servers import ServerProcess, alertmanager, free_port, prometheus
from vigil.settings import Settings
from vigil.shop import Shop, generate_traffic, running_shop
from vigil.supervisor import Supervisor, run_roles

T = TypeVar("T")

DEMO_DIR = Path(__file__).resolve().parent.parent / "deploy" / "demo"
MARKER = "demo.json"  # in the data dir: its data is a demo's, which the next demo replaces
BASELINE_SECONDS = 35.0  # healthy traffic before the broken release
INNOCENT_LEAD_SECONDS = 10.0  # the harmless deploy comes this long before the broken one
ALERT_WAIT_SECONDS = 120.0  # no report this long after the broken release: the demo failed
TRAFFIC_RATE = 20.0  # requests per second to the frontend
INNOCENT = ("search", "0.9.1")
BROKEN = ("checkout", "1.5.0")

QUERIES = {
    "the incidents and their root cause": "SELECT incident_id, service, status, root_cause, "
    "root_cause_service, round(root_cause_confidence, 2) AS confidence FROM incidents",
    "each tool call, with its duration": "SELECT incident_id, tool_name, status, "
    "round(duration_ms) AS ms FROM tool_calls ORDER BY requested_at",
    "each investigation": "SELECT incident_id, attempt, status, round(duration_ms) AS ms, "
    "model_requests, tool_calls, top_category, top_service FROM investigations",
    "every event, in order": "SELECT seq, type, incident_id, occurred_at FROM events ORDER BY seq",
}


class DemoError(Exception):
    """The demo cannot go on; the message says why, in one line."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) before the demo was done."""


# -- telling ------------------------------------------------------------------------------------


class Teller:
    """Where the story goes: a terminal (rich: colours, a spinner on what is awaited) or plain
    lines (a pipe, CI), each line prefixed with the seconds since the demo began."""

    def __init__(self, console: Console, *, live: bool) -> None:
        self.console = console
        self.live = live
        self.began = time.monotonic()
        self._status = console.status("") if live else None

    def say(self, text: str, style: str = "") -> None:
        stamp = f"+{time.monotonic() - self.began:5.1f}s "
        if self.live:
            styled = f"[dim]{stamp}[/]" + (f"[{style}]" if style else "") + escape(text)
            self.console.print(styled, highlight=False)
        else:
            print(stamp + text, flush=True)

    def plain(self, text: str, style: str = "") -> None:
        """A line without a time stamp (a report's details, the queries)."""
        if self.live:
            self.console.print((f"[{style}]" if style else "") + escape(text), highlight=False)
        else:
            print(text, flush=True)

    def waiting(self, text: str | None) -> None:
        """What the demo waits for (a spinner on a terminal; nothing in plain lines)."""
        if self._status is None:
            return
        if text is None:
            self._status.stop()
        else:
            self._status.update(escape(text))
            self._status.start()


@dataclass
class Story:
    """What the stream has told so far, and whether the incident is told to its end: every
    incident that opened (the broken service's among them) has its report."""

    teller: Teller
    broken: str
    services: dict[str, str] = field(default_factory=dict)  # incident -> service
    investigating: set[str] = field(default_factory=set)
    concluded: dict[str, RootCauseConcluded] = field(default_factory=dict)
    tools: dict[tuple[str, str], str] = field(default_factory=dict)  # (incident, call) -> tool
    told: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data)
        except MalformedEvent:
            return  # the projector dead-letters it; nothing to tell
        self.tell(event)
        self.changed.set()
        broken = [i for i, s in self.services.items() if s == self.broken]
        if any(i in self.concluded for i in broken) and self.investigating <= set(self.concluded):
            self.told.set()

    def _who(self, incident: str) -> str:
        service = self.services.get(incident)
        return f"{incident} ({service})" if service else incident

    def _tag(self, incident: str) -> str:
        """`checkout: `: whose investigation a tool call is (several run at once)."""
        return f"{self.services.get(incident, incident)}: "

    def tell(self, event: Event) -> None:
        say, data, incident = self.teller.say, event.data, event.incident_id
        if isinstance(data, ChangeRecorded):
            say(f"change   {data.service}: {data.description} (ChangeRecorded)", "magenta")
        elif isinstance(data, AnomalyDetected):
            if data.service and incident not in self.services:
                self.services[incident] = data.service
            what = data.annotations.get("summary") or f"value {data.value}"
            say(
                f"alert    {data.name} firing on {data.service}: {what} "
                f"(AnomalyDetected from {data.origin}, incident {incident})",
                "bold red",
            )
        elif isinstance(data, InvestigationStarted):
            self.investigating.add(incident)
            onset = data.onset.strftime("%H:%M:%S") if data.onset else "unknown"
            say(
                f"investigation of {self._who(incident)}: attempt {data.attempt} with "
                f"{data.model}, onset {onset} (InvestigationStarted)",
                "cyan",
            )
        elif isinstance(data, ToolRequested):
            self.tools[(incident, data.tool_call_id)] = data.tool_name
            args = json.dumps(data.args, separators=(",", ":"))
            say(f"tool     {self._tag(incident)}{data.tool_name} {args} started "
                f"[{data.tool_call_id}] (ToolRequested)")  # fmt: skip
        elif isinstance(data, ToolCompleted):
            how = f"reused {data.reused_from}" if data.reused_from else f"{data.duration_ms:.0f} ms"
            say(f"tool     {self._tag(incident)}{data.tool_name} completed in {how} "
                f"[{data.tool_call_id}] (ToolCompleted)", "green")  # fmt: skip
        elif isinstance(data, ToolFailed):
            why = "timed out" if data.timed_out else data.error.splitlines()[0][:160]
            say(f"tool     {self._tag(incident)}{data.tool_name} failed after "
                f"{data.duration_ms:.0f} ms: {why} [{data.tool_call_id}] (ToolFailed)",
                "yellow")  # fmt: skip
        elif isinstance(data, RootCauseConcluded):
            self.concluded[incident] = data
            self.tell_report(incident, data)

    def tell_report(self, incident: str, concluded: RootCauseConcluded) -> None:
        report, plain = concluded.report, self.teller.plain
        self.teller.say(
            f"report   {self._who(incident)}: {report.summary} (RootCauseConcluded, attempt "
            f"{concluded.attempt}{', partial' if report.partial else ''})",
            "bold",
        )
        for rank, h in enumerate(report.hypotheses, 1):
            style = "bold green" if rank == 1 else ""
            plain(f"    {rank}. {h.category} of {h.service or 'no service'}, confidence "
                  f"{h.confidence:.2f}: {h.explanation}", style)  # fmt: skip
            plain(f"       evidence: {', '.join(h.evidence) or 'none'}", "dim")
        for r in report.ruled_out:
            plain(f"    ruled out: {r.what}: {r.reason} "
                  f"(evidence: {', '.join(r.evidence) or 'none'})", "dim")  # fmt: skip
        for gap in report.gaps:
            plain(f"    gap: {gap}", "yellow")
        if concluded.partial_reason:
            plain(f"    partial: {concluded.partial_reason}", "yellow")


# -- the servers' configuration -----------------------------------------------------------------


def prometheus_config(targets: dict[str, str], alertmanager_port: int) -> dict[str, Any]:
    """Scrape each shop service every second (labelled with its `service`) and evaluate the
    demo's alert rules, sending alerts to the Alertmanager on `alertmanager_port`."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(DEMO_DIR / "alerts.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": "shop",
                "static_configs": [
                    {"targets": [target], "labels": {"service": name}}
                    for name, target in targets.items()
                ],
            }
        ],
    }


def alertmanager_config(webhook_url: str, token_file: Path) -> dict[str, Any]:
    """Every alert to Vigil's webhook with the run's bearer token, a second after it fires."""
    return {
        "route": {
            "receiver": "vigil",
            "group_by": ["alertname", "service"],
            "group_wait": "1s",
            "group_interval": "5s",
            "repeat_interval": "4h",
        },
        "receivers": [
            {
                "name": "vigil",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "max_alerts": 0,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                        },
                    }
                ],
            }
        ],
    }


def fresh_data_dir(data_dir: Path, *, embedded: bool) -> None:
    """Remove what an earlier demo left in `data_dir` (each demo is its own incident: an old
    one's alert groups would otherwise take in the new alerts); refuse a data dir that holds
    data of a Vigil that is not a demo's."""
    marker = data_dir / MARKER
    ours = ["vigil.duckdb", "vigil.duckdb.wal", "runtime.json", "prometheus", "alertmanager"]
    if embedded:
        ours.append("nats")
    found = [name for name in ours if (data_dir / name).exists()]
    if found and not marker.exists():
        raise DemoError(
            f"data dir {data_dir} holds a Vigil's data ({', '.join(found)}) that is not a "
            "demo's: set VIGIL_DATA_DIR to another directory"
        )
    for name in found:
        path = data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    marker.write_text(json.dumps({"demo": True, "began": datetime.now(UTC).isoformat()}))


def demo_settings(cfg: Settings, prometheus_url: str, alertmanager_url: str) -> Settings:
    """The user's settings (VIGIL_DATA_DIR, VIGIL_MODEL, ...) with what the demo runs: its
    Prometheus, Alertmanager, topology and short-window signals, a token for this run, and the
    webhook on a free port."""
    return cfg.model_copy(
        update={
            "prometheus_url": prometheus_url,
            "alertmanager_url": alertmanager_url,
            "topology": DEMO_DIR / "topology.yaml",
            "signals": DEMO_DIR / "signals.yaml",
            "webhook_token": SecretStr(secrets.token_urlsafe(32)),
            "rules": None,  # Alertmanager brings the anomalies: no detector
        }
    )


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Demo:
    """One run: `stop` is set by Ctrl-C/SIGTERM; `roles` is the supervisor of Vigil's roles."""

    cfg: Settings
    sock: socket.socket
    teller: Teller
    stop: asyncio.Event
    up_roles: Callable[..., list[Any]]
    roles: asyncio.Task[None] | None = None
    _procs: list[ServerProcess] = field(default_factory=list)  # Prometheus, Alertmanager

    async def until(self, waiting: Awaitable[T]) -> T:
        """What `waiting` gives; Interrupted if `stop` is set first, or the roles' error (a
        DemoError if none) if they end first."""
        waiter = asyncio.ensure_future(waiting)
        stopping = asyncio.create_task(self.stop.wait())
        watched: set[asyncio.Future[Any]] = {waiter, stopping}
        if self.roles is not None:
            watched.add(self.roles)
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        if self.stop.is_set():
            raise Interrupted
        assert self.roles is not None
        self.roles.result()  # raises what stopped them
        raise DemoError("Vigil's roles stopped before the demo was done")

    async def run(self, *, stay: bool) -> None:
        """The whole demo; returns once the incident is told (and, with `stay`, Ctrl-C)."""
        say, cfg = self.teller.say, self.cfg
        async with contextlib.AsyncExitStack() as stack:
            url, embedded = await stack.enter_async_context(broker(cfg))
            shop = await stack.enter_async_context(running_shop())
            say(f"shop     {', '.join(f'{n} {s.url}' for n, s in shop.services.items())}")
            procs, prom, am = self._servers(shop)
            for proc in procs:  # stopped when the block ends, whatever ends it
                stack.push_async_callback(proc.stop)
            self.cfg = cfg = demo_settings(cfg, prom, am)
            assert cfg.webhook_token is not None
            (cfg.data_dir / "alertmanager" / "vigil-token").write_text(
                cfg.webhook_token.get_secret_value()
            )
            # Both at once (each takes a second or two to be ready); one failing stops the other.
            await self.until(run_roles(*(p.start() for p in procs)))
            say(f"servers  Prometheus {prom}, Alertmanager {am}, NATS {url}")

            up = asyncio.Event()
            roles = Supervisor(self.up_roles(cfg, url, self.sock, self.stop, None, embedded),
                               self.stop, on_up=up.set)  # fmt: skip
            self.roles = asyncio.create_task(roles.run())
            try:
                self.teller.waiting("starting Vigil's roles")
                await self.until(up.wait())
                host, port = self.sock.getsockname()[:2]
                say(f"vigil    up: projector, webhook http://{host}:{port}/webhooks/alertmanager, "
                    f"workers, responder ({cfg.model}); DuckDB {cfg.db_path}")  # fmt: skip
                async with bus(cfg, url, "vigil-demo") as nc:
                    await self._incident(nc, shop, stay=stay)
            finally:
                self.teller.waiting(None)
                self.stop.set()
                await self.roles

    def _servers(self, shop: Shop) -> tuple[list[ServerProcess], str, str]:
        """Prometheus and Alertmanager, configured in the data dir, not started yet; their
        URLs. Alertmanager reads the webhook's token from a file written before it starts."""
        # Absolute: Alertmanager reads a relative credentials_file from its config's folder.
        data = self.cfg.data_dir.resolve()
        prom_port, am_port = free_port(), free_port()
        (data / "prometheus").mkdir()
        (data / "alertmanager").mkdir()
        host, port = self.sock.getsockname()[:2]
        webhook = f"http://{host}:{port}/webhooks/alertmanager"
        token_file = data / "alertmanager" / "vigil-token"
        token_file.touch(mode=0o600)
        for path, config in (
            (data / "prometheus" / "prometheus.yml", prometheus_config(shop.targets(), am_port)),
            (data / "alertmanager" / "alertmanager.yml", alertmanager_config(webhook, token_file)),
        ):
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        procs = [
            prometheus(data / "prometheus" / "prometheus.yml", data / "prometheus" / "tsdb",
                       prom_port, retention="1d"),
            alertmanager(data / "alertmanager" / "alertmanager.yml", data / "alertmanager" / "data",
                         am_port),
        ]  # fmt: skip
        self._procs = procs
        return procs, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"

    async def _incident(self, nc: NATS, shop: Shop, *, stay: bool) -> None:
        js, say = nc.jetstream(), self.teller.say
        story = Story(self.teller, broken=BROKEN[0])
        # Told from the stream, from the first event appended after this point.
        last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1
        )
        sub = await js.subscribe(
            "vigil.evt.>", cb=story.on_message, ordered_consumer=True, config=config
        )
        traffic_stop = asyncio.Event()
        traffic = asyncio.create_task(
            generate_traffic(shop.services["frontend"].url, traffic_stop, rate=TRAFFIC_RATE)
        )
        try:
            say(f"traffic  {TRAFFIC_RATE:g} requests/s to the frontend (browse: search; "
                f"buy: checkout, payments); {BASELINE_SECONDS:g} s healthy")  # fmt: skip
            self.teller.waiting("healthy baseline traffic")
            await self.until(asyncio.sleep(BASELINE_SECONDS - INNOCENT_LEAD_SECONDS))
            await self.until(self._deploy(js, shop, *INNOCENT))
            self.teller.waiting("healthy baseline traffic")
            await self.until(asyncio.sleep(INNOCENT_LEAD_SECONDS))
            await self.until(self._deploy(js, shop, *BROKEN))
            self.teller.waiting(
                "waiting for Prometheus to fire, Alertmanager to notify, the responder to report"
            )
            try:
                await self.until(asyncio.wait_for(self._told(story), ALERT_WAIT_SECONDS))
            except TimeoutError:
                said = " | ".join(line for p in self._procs for line in p.log[-2:])
                raise DemoError(
                    f"no report on {BROKEN[0]} within {ALERT_WAIT_SECONDS:g} s of its deploy "
                    f"(alerts: {self.cfg.prometheus_url}/alerts; last logs: {said})"
                ) from None
            self.teller.waiting(None)
            self.tell_queries()
            if stay:
                self.teller.plain(
                    f"Still running: the shop, Prometheus {self.cfg.prometheus_url}, "
                    f"Alertmanager {self.cfg.alertmanager_url} and Vigil. Ctrl-C stops them all.",
                    "bold",
                )
                with contextlib.suppress(Interrupted):  # the end asked for, not an interruption
                    await self.until(asyncio.Event().wait())
        finally:
            traffic_stop.set()
            await traffic
            with contextlib.suppress(Exception):  # the broker may be gone already
                await sub.unsubscribe()

    async def _told(self, story: Story) -> None:
        """Returns once the broken service's incident has its report, every investigation
        begun has its report, and every alert Prometheus holds (pending or firing) is on a
        service whose incident has its report: nothing more is on its way. An upstream service
        alerts a few seconds after the broken one, as its errors follow."""
        await story.told.wait()
        url = f"{self.cfg.prometheus_url}/api/v1/alerts"
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                story.changed.clear()
                alerts = (await client.get(url)).json()["data"]["alerts"]
                raised = {a["labels"].get("service") for a in alerts}
                reported = {story.services.get(i) for i in story.concluded}
                if raised <= reported and story.investigating <= set(story.concluded):
                    return
                # Prometheus's alerts change with no event to await: look again every half
                # second, or at once when the stream tells something new.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(story.changed.wait(), 0.5)

    async def _deploy(self, js: Any, shop: Shop, service: str, version: str) -> None:
        """Deploy `version` of `service` through its admin endpoint, and record the change."""
        before = shop.services[service].release.version
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{shop.services[service].url}/admin/deploy", json={"version": version}
            )
        if answer.status_code != 200:
            raise DemoError(f"deploying {service} {version}: {answer.status_code} {answer.text}")
        change = ChangeRecorded(
            service=service, kind="deploy", description=f"deploy {version} (was {before})",
            author="vigil demo", changed_at=datetime.now(UTC), ref=version,
        )  # fmt: skip
        event = new_event(change, incident_id=f"change-{uuid.uuid4().hex[:12]}", source="demo")
        await EventPublisher(js).publish(event)

    def tell_queries(self) -> None:
        plain = self.teller.plain
        data = self.cfg.data_dir
        plain("")
        plain(f"Look deeper (the read model in {self.cfg.db_path}):", "bold")
        for title, query in QUERIES.items():
            plain(f"  # {title}", "dim")
            plain(f'  VIGIL_DATA_DIR={data} vigil sql "{query}"')
