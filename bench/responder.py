"""Responder benchmarks: tools in parallel across worker processes, investigations per second,
and the latency from a webhook POST to the incident's RootCauseConcluded.

Each figure is set beside the raw library in the same run: pydantic-ai running the same model
with the same tools in-process (no bus, no events, no crash safety), so the ratio is what the
bus and the black box cost.

    python -m bench.responder [--rounds 3] [--investigations 100] [--alerts 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    ExternalToolset,
    ModelMessage,
    ModelResponse,
    ToolCallPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bench.servers import vigil_up
from eventlog.envelope import new_event, parse_event
from eventlog.payloads import AnomalyDetected
from eventlog.payloads.investigation import RootCauseReport
from eventlog.publisher import EventPublisher
from eventlog.stream import connect, ensure_streams
from responder.agent import build_agent, prompt, tool_definitions
from responder.analyst import builtin_model
from responder.investigator import Investigator, run_investigator
from responder.progress import Limits
from responder.tools import ToolContext, ToolRegistry, ToolSettings, load_tools
from responder.worker import run_workers
from vigil.broker import EmbeddedNats
from vigil.tuning import tune_gc

TOKEN = "bench-token"
TOOLS_AT_ONCE = 8
CONFIGS = ((1, 1), (1, 16), (4, 1), (4, 16))  # (worker processes, tool calls each at once)


def anomaly(service: str) -> AnomalyDetected:
    return AnomalyDetected(
        origin="alertmanager",
        name="HighErrorRate",
        fingerprint=service,
        starts_at=datetime.now(UTC),
        service=service,
        severity="critical",
        labels={"alertname": "HighErrorRate", "service": service},
    )


def eight_sleeps(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Asks for eight one-second tools in one response, then answers citing them."""
    if not any(isinstance(m, ModelResponse) for m in messages):
        return ModelResponse(
            parts=[
                ToolCallPart("sleep_1s", {"n": i}, tool_call_id=f"s{i}")
                for i in range(TOOLS_AT_ONCE)
            ]
        )
    report = {
        "summary": "slept",
        "hypotheses": [
            {
                "category": "unknown",
                "confidence": 0.5,
                "explanation": "benchmark",
                "evidence": [f"s{i}" for i in range(TOOLS_AT_ONCE)],
            }
        ],
    }
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report)])


# -- the concluded events, watched -----------------------------------------------------------


class Conclusions:
    """When each incident's RootCauseConcluded (and first AnomalyDetected) was seen."""

    def __init__(self) -> None:
        self.detected: dict[str, tuple[str, float]] = {}  # service -> (incident, when)
        self.concluded: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event.data, AnomalyDetected) and event.data.service:
            self.detected.setdefault(event.data.service, (event.incident_id, time.monotonic()))
        elif event.type == "RootCauseConcluded":
            self.concluded.setdefault(event.incident_id, time.monotonic())
            self.changed.set()

    async def until(self, done: Callable[[], bool], timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def watched(js: JetStreamContext) -> AsyncIterator[Conclusions]:
    seen = Conclusions()
    sub = await js.subscribe("vigil.evt.>", cb=seen.on_message, ordered_consumer=True)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def investigator(
    js: JetStreamContext, model: Model, registry: ToolRegistry
) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    inv = Investigator(js, build_agent(model, registry), "bench", limits=Limits(seconds=600))
    task = asyncio.create_task(run_investigator(inv, stop, ready=ready, concurrency=64))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield
    finally:
        stop.set()
        await task


# -- 1. eight one-second tools, across worker processes --------------------------------------


@contextlib.asynccontextmanager
async def worker_processes(nats_url: str, processes: int, concurrency: int) -> AsyncIterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {
        "VIGIL_NATS_URL": nats_url,
        "VIGIL_TOOL_MODULES": "bench.sleepy_tools",
        "VIGIL_WORKER_CONCURRENCY": str(concurrency),
    }
    procs = []
    try:
        for _ in range(processes):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "vigil",
                "worker",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line.startswith(b"working"):
                raise RuntimeError(f"vigil worker did not start: {line!r}")
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()


async def parallel_tools(tmp: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds from an anomaly to its report when the model asks for eight one-second tools."""
    figures: dict[str, list[float]] = {"raw in-process": []}
    registry = load_tools(["bench.sleepy_tools"])
    model = FunctionModel(eight_sleeps)
    async with (
        running_nats(tmp / "parallel") as (url, js),
        watched(js) as seen,
        investigator(js, model, registry),
    ):
        for processes, concurrency in CONFIGS:
            label = f"{processes} x {concurrency}"
            async with worker_processes(url, processes, concurrency):
                for r in range(rounds):
                    incident = f"p{processes}-{concurrency}-{r}"
                    started = time.monotonic()
                    await EventPublisher(js).publish(
                        new_event(anomaly(incident), incident_id=incident, source="bench")
                    )
                    await seen.until(lambda: incident in seen.concluded)  # noqa: B023
                    figures.setdefault(label, []).append(seen.concluded[incident] - started)
    for _ in range(rounds):
        started = time.monotonic()
        await raw_investigation(FunctionModel(eight_sleeps), registry, anomaly("raw"))
        figures["raw in-process"].append(time.monotonic() - started)
    return figures


# -- 2. investigations per second, built-in analyst, instant tools --------------------------


async def throughput(tmp: Path, n: int) -> dict[str, float]:
    """Investigations per second: n incidents at once, the built-in analyst, the default tools
    with nothing configured behind them (each answers at once, most with a failure)."""
    registry = load_tools([])
    async with running_nats(tmp / "throughput") as (_, js), watched(js) as seen:
        stop, ready = asyncio.Event(), asyncio.Event()
        nc = js._nc  # the workers' SQL requests (similar_incidents) go over it
        workers = asyncio.create_task(
            run_workers(
                js, registry, stop, nc=nc, ready=ready, settings=ToolSettings(), concurrency=64
            )
        )
        await ready.wait()
        async with investigator(js, builtin_model(), registry):
            events = [
                new_event(anomaly(f"svc-{i}"), incident_id=f"t-{i}", source="bench")
                for i in range(n)
            ]
            started = time.monotonic()
            await EventPublisher(js).publish_many(events)
            await seen.until(lambda: len(seen.concluded) >= n)
            ours = n / (max(seen.concluded.values()) - started)
        stop.set()
        await workers
    started = time.monotonic()
    await asyncio.gather(
        *(raw_investigation(builtin_model(), registry, anomaly(f"r{i}"), nc=None) for i in range(n))
    )
    raw = n / (time.monotonic() - started)
    return {"ours": ours, "raw": raw}


async def raw_investigation(
    model: Model, registry: ToolRegistry, data: AnomalyDetected, nc: Any = None
) -> RootCauseReport:
    """The raw library: pydantic-ai with the same model, each turn's tools run in-process at
    once (asyncio.gather), results handed back in memory: no bus, no events."""
    definitions = tool_definitions(registry)
    agent: Agent[None, Any] = Agent(
        model,
        output_type=[RootCauseReport, DeferredToolRequests],
        toolsets=[ExternalToolset(definitions)],
    )
    event = new_event(data, incident_id="raw", source="bench")
    now = datetime.now(UTC)
    context = ToolContext(
        incident_id="raw",
        now=now,
        onset=data.starts_at,
        js=None,
        nc=nc,  # type: ignore[arg-type]
        settings=ToolSettings(),
    )
    result = await agent.run(prompt(event, [event], now))
    while isinstance(result.output, DeferredToolRequests):
        calls = result.output.calls
        outcomes = await asyncio.gather(*(_run_tool(registry, context, c) for c in calls))
        answers = DeferredToolResults(
            calls=dict(zip([c.tool_call_id for c in calls], outcomes, strict=True))
        )
        result = await agent.run(
            message_history=result.all_messages(), deferred_tool_results=answers
        )
    return result.output


async def _run_tool(registry: ToolRegistry, context: ToolContext, call: ToolCallPart) -> Any:
    from pydantic_ai import ToolFailed

    tool = registry.get(call.tool_name)
    try:
        return await tool.run(context, tool.args.model_validate(call.args_as_dict()))
    except Exception as exc:  # a failed tool is an answer, as on the bus
        return ToolFailed(f"{type(exc).__name__}: {exc}")


# -- 3. webhook POST -> RootCauseConcluded ----------------------------------------------------


async def webhook_latency(tmp: Path, n: int) -> dict[str, list[float]]:
    """One alert at a time through `vigil up` (built-in analyst, default tools, nothing behind
    them): seconds from the POST to the AnomalyDetected and to the RootCauseConcluded."""
    out: dict[str, list[float]] = {"detected": [], "concluded": []}
    async with vigil_up(tmp / "vigil", TOKEN) as vigil:
        nc = await connect(vigil.nats_url, name="bench")
        js = nc.jetstream()
        try:
            async with watched(js) as seen, httpx.AsyncClient(base_url=vigil.url) as http:
                for i in range(n + 5):  # five to warm up
                    service = f"svc-{i}"
                    started = time.monotonic()
                    answer = await http.post(
                        "/webhooks/alertmanager",
                        content=_body(service),
                        headers={
                            "Authorization": f"Bearer {TOKEN}",
                            "Content-Type": "application/json",
                        },
                    )
                    answer.raise_for_status()
                    await seen.until(lambda s=service: _reported(seen, s))
                    incident, detected = seen.detected[service]
                    if i >= 5:
                        out["detected"].append(detected - started)
                        out["concluded"].append(seen.concluded[incident] - started)
        finally:
            await nc.close()
    return out


def _reported(seen: Conclusions, service: str) -> bool:
    return service in seen.detected and seen.detected[service][0] in seen.concluded


def _body(service: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    alert = {
        "status": "firing",
        "labels": {"alertname": "HighErrorRate", "service": service, "severity": "critical"},
        "annotations": {"summary": "errors"},
        "startsAt": now,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": service,
    }
    return orjson.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{service="{service}"}}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "vigil",
            "groupLabels": {"service": service},
            "commonLabels": alert["labels"],
            "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": [alert],
        }
    )


# -- running it -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_nats(store: Path) -> AsyncIterator[tuple[str, JetStreamContext]]:
    server = EmbeddedNats(store_dir=store)
    await server.start()
    nc = await connect(server.url, name="bench")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        yield server.url, js
    finally:
        await nc.close()
        await server.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(rounds: int, investigations: int, alerts: int) -> None:
    tune_gc()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"pydantic-ai {version('pydantic-ai-slim')}, nats-py {version('nats-py')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        parallel = await parallel_tools(Path(tmp), rounds)
        print("\n1. anomaly -> report, the model asking for 8 tools of 1 s in one response")
        sequential = TOOLS_AT_ONCE * 1.0
        for label, values in parallel.items():
            med = statistics.median(values)
            print(
                f"  {label:>16}: median {med:.2f} s  speedup vs one after another "
                f"({sequential:.0f} s): {sequential / med:.1f}x  rounds {_list(values)}"
            )
        rates = [await throughput(Path(tmp) / str(r), investigations) for r in range(rounds)]
        ours = statistics.median(r["ours"] for r in rates)
        raw = statistics.median(r["raw"] for r in rates)
        print(f"\n2. investigations/s, built-in analyst, instant tools, {investigations} at once")
        print(
            f"  ours {ours:.1f}/s  raw pydantic-ai in-process {raw:.1f}/s  ratio {ours / raw:.2f}"
            f"  rounds {[(round(r['ours'], 1), round(r['raw'], 1)) for r in rates]}"
        )
        latency = await webhook_latency(Path(tmp), alerts)
        print(f"\n3. webhook POST -> event, one alert at a time through vigil up ({alerts} alerts)")
        for what, values in latency.items():
            print(
                f"  -> {what}: p50 {pct(values, 0.5) * 1000:.0f} ms  "
                f"p99 {pct(values, 0.99) * 1000:.0f} ms  max {max(values) * 1000:.0f} ms"
            )


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--investigations", type=int, default=100)
    parser.add_argument("--alerts", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.investigations, args.alerts))
