"""`vigil eval`: replay incident scenarios (docs/scenarios.md) through the real pipeline and
score the root cause each investigation ranks first.

Each scenario gets a world of its own, so nothing of one leaks into another: a real
Prometheus on a free loopback port serving the scenario's metrics (backfilled by promtool),
an embedded NATS, the projector, the webhook, the tool workers and the investigator, all in
a temporary directory. The scenario's changes are recorded as `ChangeRecorded`; the trigger
is posted to the webhook as Alertmanager would send it (its generatorURL carries the rule's
`expr`), then the other alerts that had started by then (those that had ended, resolved).
The investigator starts only once that world is in place, and the attempt is asked for with
`now` set to the trigger's start: the tools look at nothing later, so later alerts, changes
and samples are hidden.

Scores: top-1 and top-3 hits of the expected category among the report's ranked categories,
and the Brier score of the top hypothesis' confidence, mean((confidence - hit)^2) over the
scenarios that ran (Brier, "Verification of forecasts expressed in terms of probability",
Monthly Weather Review 78, 1950): 0 is perfect, a constant 0.5 scores 0.25, and a confident
wrong answer costs the most.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from nats.js import JetStreamContext
from pydantic import SecretStr

from eventlog.envelope import new_event, parse_event, subject_for
from eventlog.history import read_events
from eventlog.payloads import AnomalyDetected, ChangeRecorded, RootCauseConcluded
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from responder.attempts import ask_for_attempt
from vigil.app import (
    bind_http,
    broker,
    bus,
    run_api,
    run_projector,
    run_responder_role,
    run_worker_role,
)
from vigil.scenarios import (
    Scenario,
    ScenarioAlert,
    ScenarioError,
    check_metrics,
    load_scenario,
)
from vigil.servers import ServerError, backfill, free_port, prometheus, running
from vigil.settings import Settings
from vigil.supervisor import RoleFailed

log = logging.getLogger(__name__)
NAMESPACE = uuid.UUID("1f0c8a52-6a43-4c55-9a57-3c1f3f2c2e51")  # ids of a scenario's events
EXTERNAL_URL = "http://alertmanager.eval"
MARGIN_SECONDS = 30.0  # past the investigation's own wall-time limit, the eval gives up


@dataclass
class ScenarioResult:
    """One scenario's outcome; `error` says why it could not run (then nothing else counts)."""

    name: str
    expected: str | None = None
    expected_service: str | None = None
    acceptable_top3: list[str] = field(default_factory=list)
    ranked: list[str] = field(default_factory=list)  # categories, best first, each once
    top_service: str | None = None
    hit_top1: bool = False
    hit_top3: bool = False
    hit_service: bool = False
    confidence: float | None = None
    tool_calls: int = 0
    seconds: float = 0.0
    partial: str | None = None
    summary: str = ""
    error: str | None = None


def score(scenario: Scenario, report: RootCauseConcluded, seconds: float) -> ScenarioResult:
    """The scenario's result from its investigation's conclusion."""
    ranked = list(dict.fromkeys(h.category for h in report.report.hypotheses))
    top = report.report.hypotheses[0] if report.report.hypotheses else None
    expected = scenario.expected
    return ScenarioResult(
        name=scenario.name,
        expected=expected.root_cause_category,
        expected_service=expected.root_cause_service,
        acceptable_top3=list(expected.acceptable_top3),
        ranked=ranked,
        top_service=top.service if top else None,
        hit_top1=bool(ranked) and ranked[0] == expected.root_cause_category,
        hit_top3=expected.root_cause_category in ranked[:3],
        hit_service=top is not None
        and (expected.root_cause_service is None or top.service == expected.root_cause_service),
        confidence=top.confidence if top else None,
        tool_calls=report.tool_calls,
        seconds=round(seconds, 2),
        partial=report.partial_reason,
        summary=report.report.summary,
    )


def summarize(results: list[ScenarioResult], model: str) -> dict[str, Any]:
    """The suite's scores: counts over every scenario (one that could not run is a miss),
    the Brier score over those that ran (None when none did)."""
    ran = [r for r in results if r.error is None]
    brier = (
        round(sum(((r.confidence or 0.0) - float(r.hit_top1)) ** 2 for r in ran) / len(ran), 4)
        if ran
        else None
    )
    return {
        "model": model,
        "scenarios": len(results),
        "ran": len(ran),
        "failed": len(results) - len(ran),
        "top1": sum(r.hit_top1 for r in results),
        "top3": sum(r.hit_top3 for r in results),
        "service_top1": sum(r.hit_top1 and r.hit_service for r in results),
        "brier": brier,
        "results": [asdict(r) for r in results],
    }


async def evaluate(
    folders: list[Path],
    settings: Settings,
    work: Path,
    *,
    on_start: Callable[[str], None] = lambda name: None,
    on_done: Callable[[ScenarioResult], None] = lambda result: None,
    keep: bool = False,
) -> list[ScenarioResult]:
    """Each folder's scenario run in turn, in `work`/its name (removed after it, unless
    `keep`: then its `vigil` folder is a data dir for `vigil sql`); a folder that is not a
    scenario, or a scenario that cannot run, is a result with its `error`."""
    results = []
    for folder in folders:
        on_start(folder.name)
        place = work / folder.name
        try:
            result = await run_scenario(load_scenario(folder), settings, place)
        except (ScenarioError, ServerError, RoleFailed, EvalFailed) as exc:
            result = ScenarioResult(name=folder.name, error=str(exc))
        except Exception as exc:  # whatever stopped this one, the others still run
            log.exception("scenario %s", folder.name)
            result = ScenarioResult(name=folder.name, error=f"{type(exc).__name__}: {exc}")
        finally:
            if not keep:
                await asyncio.to_thread(shutil.rmtree, place, True)
        results.append(result)
        on_done(result)
    return results


class EvalFailed(RuntimeError):
    """The scenario ran but gave no answer in time, or Vigil refused its input."""


async def run_scenario(scenario: Scenario, base: Settings, work: Path) -> ScenarioResult:
    """Replay one scenario in a world of its own under `work` (see the module's docstring)."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    metrics = await asyncio.to_thread(_plain_metrics, scenario, work)
    try:
        await backfill(metrics, work / "prometheus")
    except ServerError as exc:
        raise ScenarioError(f"{scenario.name}: {scenario.metrics.name}: {exc}") from None
    config = work / "prometheus.yml"
    await asyncio.to_thread(config.write_text, "global:\n  evaluation_interval: 1m\n")
    port = free_port()
    async with running(prometheus(config, work / "prometheus", port)):
        token = secrets.token_urlsafe(24)
        cfg = base.model_copy(
            update={
                "data_dir": work / "vigil",
                "nats_url": None,
                "nats_port": 0,
                "http_host": "127.0.0.1",
                "http_port": 0,
                "webhook_token": SecretStr(token),
                "prometheus_url": f"http://127.0.0.1:{port}",
                "alertmanager_url": None,
                "topology": scenario.topology,
                "responder_enabled": True,
            }
        )
        return await _investigate(scenario, cfg, token)


def _plain_metrics(scenario: Scenario, work: Path) -> Path:
    """The metrics as plain OpenMetrics, which promtool reads (a .gz file is unpacked into
    `work` first), every sample checked to lie inside the window."""
    source = plain = scenario.metrics
    if source.suffix == ".gz":
        plain = work / "metrics.om"
        try:
            with gzip.open(source, "rb") as packed, plain.open("wb") as unpacked:
                shutil.copyfileobj(packed, unpacked)
        except (OSError, EOFError) as exc:  # not gzip (BadGzipFile is an OSError), or cut
            why = f"{scenario.name}: {source.name}: not a whole gzip file: {exc}"
            raise ScenarioError(why) from None
    check_metrics(scenario, plain)
    return plain


async def _investigate(scenario: Scenario, cfg: Settings, token: str) -> ScenarioResult:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    async with broker(cfg) as (url, _), _roles() as start:
        projector = await start(lambda stop, ready: run_projector(cfg, url, stop, on_ready=ready))
        sock = bind_http(cfg)
        try:
            await start(lambda stop, ready: run_api(cfg, url, sock, stop, on_ready=ready))
            webhook = "http://{}:{}/webhooks/alertmanager".format(*sock.getsockname()[:2])
            async with bus(cfg, url, "vigil-eval") as nc:
                js = nc.jetstream()
                await _record_changes(js, scenario)
                await _deliver_alerts(webhook, token, scenario, cfg.prometheus_url or "")
                incident = await _incident_of(js, _fingerprint(scenario.trigger))
                await start(lambda stop, ready: run_worker_role(cfg, url, stop, on_ready=ready))
                await start(lambda stop, ready: run_responder_role(cfg, url, stop, on_ready=ready))
                began = time.monotonic()
                conclusion, seq = await _conclusion(js, incident, scenario, cfg)
                seconds = time.monotonic() - began
                await projector.wait_for(seq)  # DuckDB holds the story before the world stops
                return score(scenario, conclusion, seconds)
        finally:
            sock.close()


Role = Callable[[asyncio.Event, Callable[..., None]], Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def _roles() -> AsyncIterator[Callable[[Role], Coroutine[Any, Any, Any]]]:
    """Start roles one after another (each awaited until ready, then what it gave `on_ready`
    returned; or its failure raised); all stop together when the block ends."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(role: Role) -> Any:
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ready(*given: Any) -> None:
            if not ready.done():
                ready.set_result(given[0] if given else None)

        task = asyncio.create_task(role(stop, on_ready))
        tasks.append(task)
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await task  # raises why it stopped
            raise RoleFailed("a role stopped before it was ready")
        return ready.result()

    try:
        yield start
    except BaseException:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)  # what failed is already told
        raise
    stop.set()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, Exception):
            raise RoleFailed(f"a role failed: {type(outcome).__name__}: {outcome}") from outcome


async def _record_changes(js: JetStreamContext, scenario: Scenario) -> None:
    events = [
        new_event(
            ChangeRecorded(
                service=c.service,
                kind=c.kind,
                description=c.description,
                changed_at=scenario.at(c.at_minute),
                ref=c.ref,
                author="scenario",
            ),
            incident_id=f"change-{i}",
            source="eval",
            event_id=uuid.uuid5(NAMESPACE, f"{scenario.name}|change|{i}"),
        )
        for i, c in enumerate(scenario.changes)
    ]
    if events:
        await EventPublisher(js).publish_many(events)


async def _deliver_alerts(webhook: str, token: str, scenario: Scenario, prom: str) -> None:
    """The trigger first (it opens its incident), then the alerts that had started by its
    start, each in its own group; those that had ended by then, resolved after firing."""
    trigger_at = scenario.trigger.starts_at_minute
    posts = [_notification(scenario, scenario.trigger, prom, resolved=False)]
    for alert in scenario.alerts[1:]:
        if alert.starts_at_minute > trigger_at:
            continue  # not yet begun at the investigation's now
        posts.append(_notification(scenario, alert, prom, resolved=False))
        if alert.ends_at_minute is not None and alert.ends_at_minute <= trigger_at:
            posts.append(_notification(scenario, alert, prom, resolved=True))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30.0) as client:
        for body in posts:
            answer = await client.post(webhook, json=body, headers=headers)
            if answer.status_code != 200:
                name = body["alerts"][0]["labels"]["alertname"]
                name = name if len(name) <= 80 else name[:80] + "…"
                raise EvalFailed(
                    f"{scenario.name}: the webhook answered {answer.status_code} for "
                    f"{name}: {answer.text[:300]}"
                )


def _notification(
    scenario: Scenario, alert: ScenarioAlert, prom: str, *, resolved: bool
) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one alert alone in its group."""
    labels = alert.labels
    group = {"alertname": labels["alertname"], "service": labels["service"]}
    ends = scenario.at(alert.ends_at_minute) if resolved and alert.ends_at_minute else None
    status = "resolved" if resolved else "firing"
    generator = f"{prom}/graph?g0.expr={quote(alert.expr)}&g0.tab=1" if alert.expr else ""
    body = {
        "status": status,
        "labels": labels,
        "annotations": alert.annotations,
        "startsAt": _rfc3339(scenario.at(alert.starts_at_minute)),
        "endsAt": _rfc3339(ends) if ends else "0001-01-01T00:00:00Z",
        "generatorURL": generator,
        "fingerprint": _fingerprint(alert),
    }
    return {
        "version": "4",
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "vigil",
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": alert.annotations,
        "externalURL": EXTERNAL_URL,
        "alerts": [body],
    }


def _fingerprint(alert: ScenarioAlert) -> str:
    """Alertmanager's fingerprint is a hash of the label set: 16 hex digits."""
    text = "\x00".join(f"{k}\x00{v}" for k, v in sorted(alert.labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def _incident_of(js: JetStreamContext, fingerprint: str) -> str:
    """The incident the webhook opened for the trigger (stored before the webhook said 200)."""
    for stored in await read_events(js, [subject_for("*", "AnomalyDetected")]):
        data = stored.event.data
        if isinstance(data, AnomalyDetected) and data.fingerprint == fingerprint:
            return stored.event.incident_id
    raise EvalFailed("the webhook stored no anomaly for the trigger")


async def _conclusion(
    js: JetStreamContext, incident: str, scenario: Scenario, cfg: Settings
) -> tuple[RootCauseConcluded, int]:
    """Ask for the attempt at the trigger's start, then wait for its conclusion (and its
    stream sequence)."""
    subject = subject_for(incident, "RootCauseConcluded")
    found: asyncio.Future[tuple[RootCauseConcluded, int]] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_message(msg: Any) -> None:
        event = parse_event(msg.data)
        if isinstance(event.data, RootCauseConcluded) and not found.done():
            found.set_result((event.data, msg.metadata.sequence.stream))

    sub = await js.subscribe(subject, cb=on_message, ordered_consumer=True, stream=EVENTS_STREAM)
    try:
        await ask_for_attempt(
            js, incident, model=cfg.model, by="vigil eval", reason=f"scenario {scenario.name}",
            now=scenario.now,
        )  # fmt: skip
        timeout = cfg.investigation_max_seconds + MARGIN_SECONDS
        try:
            return await asyncio.wait_for(found, timeout)
        except TimeoutError:
            raise EvalFailed(f"{scenario.name}: no conclusion within {timeout:g}s") from None
    finally:
        await sub.unsubscribe()
