"""`vigil demo`: a real incident, end to end, told as the pipeline lives it.

It runs the embedded NATS and every role of `vigil up` (the same roles, the same supervisor, the
saga orchestrator among them), a real Prometheus and Alertmanager (Debian's), and the demo shop
(vigil/shop.py) with traffic. After a baseline of healthy traffic it deploys a harmless release
of a service off the path, then a broken release of checkout (each recorded as
`ChangeRecorded`, as a CD pipeline would), through the shop's admin endpoint. What follows is
nobody's script: Prometheus sees the errors and fires the alert rules of
deploy/demo/alerts.yml, Alertmanager notifies Vigil's webhook, the responder investigates with
tools that query that Prometheus. Then two acts of remediation (vigil/demo_acts.py): the
report's remedy run, verified and the incident resolved; a plan that cannot help, undone in
reverse. The demo only tells what appears on the stream (an ordered consumer from where the
demo began), and ends once both acts are told and every incident it saw opened has its
report, or stays up until Ctrl-C when asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import SecretStr

from eventlog.envelope import new_event
from eventlog.payloads import ChangeRecorded
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from responder.saga.catalog import load_catalog
from vigil.app import broker, bus
from vigil.demo_acts import act_one, act_two, versions, write_catalog
from vigil.demo_story import DemoError, Story, Teller
from vigil.servers import ServerProcess, alertmanager, free_port, prometheus
from vigil.settings import Settings
from vigil.shop import Shop, generate_traffic, running_shop
from vigil.supervisor import Supervisor, run_roles

T = TypeVar("T")

DEMO_DIR = Path(__file__).resolve().parent.parent / "deploy" / "demo"
MARKER = "demo.json"  # in the data dir: its data is a demo's, which the next demo replaces
CATALOG = "actions.yaml"  # in the data dir: deploy/demo/actions.yaml with the shop's address
BASELINE_SECONDS = 35.0  # healthy traffic before the broken release
INNOCENT_LEAD_SECONDS = 10.0  # the harmless deploy comes this long before the broken one
ALERT_WAIT_SECONDS = 120.0  # no report this long after the broken release: the demo failed
# An alert that fires again this long after its last firing began is a new incident: act two's
# frontend alert begins some 25 s after act one's, and is an incident of its own.
CORRELATION_SECONDS = 5.0
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
    "each remediation step": "SELECT saga_id, step, action, params->>'service' AS service, "
    "params->>'version' AS version, status FROM saga_steps ORDER BY started_at",
    "every event, in order": "SELECT seq, type, incident_id, occurred_at FROM events ORDER BY seq",
}


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) before the demo was done."""


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
    ours = ["vigil.duckdb", "vigil.duckdb.wal", "runtime.json", "prometheus", "alertmanager",
            CATALOG]  # fmt: skip
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


def demo_settings(
    cfg: Settings, prometheus_url: str, alertmanager_url: str, catalog: Path
) -> Settings:
    """The user's settings (VIGIL_DATA_DIR, VIGIL_MODEL, ...) with what the demo runs: its
    Prometheus, Alertmanager, topology and short-window signals, its action catalog and
    policy, a token for this run, and the webhook on a free port."""
    return cfg.model_copy(
        update={
            "prometheus_url": prometheus_url,
            "alertmanager_url": alertmanager_url,
            "topology": DEMO_DIR / "topology.yaml",
            "signals": DEMO_DIR / "signals.yaml",
            "actions": catalog,
            "policy": DEMO_DIR / "policy.yaml",
            "correlation_window_seconds": CORRELATION_SECONDS,
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
            catalog = write_catalog(DEMO_DIR / CATALOG, cfg.data_dir / CATALOG, shop.admin_url)
            self.cfg = cfg = demo_settings(cfg, prom, am, catalog)
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
                    f"workers, responder ({cfg.model}), saga orchestrator; DuckDB "
                    f"{cfg.db_path}")  # fmt: skip
                say(f"page     the incident timeline, live: http://{host}:{port}/")
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
        assert self.cfg.actions is not None
        story = Story(self.teller, broken=BROKEN[0], catalog=load_catalog(self.cfg.actions))
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
            await self._deploys(js, shop)
            self.teller.waiting(
                "waiting for Prometheus to fire, Alertmanager to notify, the responder to report"
            )
            await self._reported(story, f"no report on {BROKEN[0]} within "
                                 f"{ALERT_WAIT_SECONDS:g} s of its deploy")  # fmt: skip
            await act_one(self, story, BROKEN[0])
            await act_two(self, js, shop, story)
            self.teller.waiting("every incident's report")
            await self._reported(story, f"act two: not every incident had its report within "
                                 f"{ALERT_WAIT_SECONDS:g} s")  # fmt: skip
            self.teller.waiting(None)
            await self._end(shop, stay=stay)
        finally:
            traffic_stop.set()
            await traffic
            with contextlib.suppress(Exception):  # the broker may be gone already
                await sub.unsubscribe()

    async def _deploys(self, js: Any, shop: Shop) -> None:
        """The healthy baseline, the innocent deploy, the rest of the baseline, the broken one."""
        self.teller.waiting("healthy baseline traffic")
        await self.until(asyncio.sleep(BASELINE_SECONDS - INNOCENT_LEAD_SECONDS))
        await self.until(self.deploy(js, shop, *INNOCENT))
        self.teller.waiting("healthy baseline traffic")
        await self.until(asyncio.sleep(INNOCENT_LEAD_SECONDS))
        await self.until(self.deploy(js, shop, *BROKEN))

    async def _reported(self, story: Story, failed: str) -> None:
        """`_told`, or DemoError (`failed`, and what the servers last said) after a while."""
        try:
            await self.until(asyncio.wait_for(self._told(story), ALERT_WAIT_SECONDS))
        except TimeoutError:
            said = " | ".join(line for p in self._procs for line in p.log[-2:])
            raise DemoError(
                f"{failed} (alerts: {self.cfg.prometheus_url}/alerts; last logs: {said})"
            ) from None

    async def _end(self, shop: Shop, *, stay: bool) -> None:
        """What the shop runs now, the queries to look deeper; with `stay`, wait for Ctrl-C."""
        running = await versions(shop)
        self.teller.say(f"shop     runs {', '.join(f'{n} {v}' for n, v in running.items())} "
                        "(each service's /admin/release)")  # fmt: skip
        self.tell_queries()
        if stay:
            host, port = self.sock.getsockname()[:2]
            self.teller.plain(
                f"Still running: the shop, Prometheus {self.cfg.prometheus_url}, "
                f"Alertmanager {self.cfg.alertmanager_url} and Vigil (its page: "
                f"http://{host}:{port}/). Ctrl-C stops them all.",
                "bold",
            )
            with contextlib.suppress(Interrupted):  # the end asked for, not an interruption
                await self.until(asyncio.Event().wait())

    async def _told(self, story: Story) -> None:
        """Returns once the broken service's incident has its report, every investigation
        begun has its report, and every alert Prometheus holds (pending or firing) is on a
        service whose incident has its report: nothing more is on its way. An upstream service
        alerts a few seconds after the broken one, as its errors follow."""
        await story.until(lambda: story.reported)

        def reported(alerts: list[dict[str, Any]]) -> bool:
            raised = {a["labels"].get("service") for a in alerts}
            told = {story.services.get(i) for i in story.concluded}
            return raised <= told and story.investigating <= set(story.concluded)

        await self._alerts_until(story, reported)

    async def quiet(self, story: Story) -> None:
        """Returns once Prometheus holds no alert, pending or firing, and every alert told as
        firing is told as resolved: the next alert is a new one."""
        await self._alerts_until(story, lambda alerts: not alerts and not story.firing)

    async def _alerts_until(
        self, story: Story, done: Callable[[list[dict[str, Any]]], bool]
    ) -> None:
        url = f"{self.cfg.prometheus_url}/api/v1/alerts"
        async with httpx.AsyncClient(timeout=5) as client:
            while not done((await client.get(url)).json()["data"]["alerts"]):
                # Prometheus's alerts change with no event to await: look again every half
                # second, or at once when the stream tells something new.
                await story.news(0.5)

    async def deploy(self, js: Any, shop: Shop, service: str, version: str) -> str:
        """Deploy `version` of `service` through its admin endpoint, and record the change;
        the version it replaced."""
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{shop.services[service].url}/admin/deploy", json={"version": version}
            )
        if answer.status_code != 200:
            raise DemoError(f"deploying {service} {version}: {answer.status_code} {answer.text}")
        before = str(answer.json()["previous"])
        change = ChangeRecorded(
            service=service, kind="deploy", description=f"deploy {version} (was {before})",
            author="vigil demo", changed_at=datetime.now(UTC), ref=version,
        )  # fmt: skip
        event = new_event(change, incident_id=f"change-{uuid.uuid4().hex[:12]}", source="demo")
        await EventPublisher(js).publish(event)
        return before

    def tell_queries(self) -> None:
        plain = self.teller.plain
        data = self.cfg.data_dir
        plain("")
        plain(f"Look deeper (the read model in {self.cfg.db_path}):", "bold")
        for title, query in QUERIES.items():
            plain(f"  # {title}", "dim")
            plain(f'  VIGIL_DATA_DIR={data} vigil sql "{query}"')
