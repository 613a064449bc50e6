"""Benchmark: Alertmanager webhooks into durable events, beside what bounds them, same run.

    python -m bench.webhook [--seconds S] [--rounds R]

wrk (bench/wrk/alertmanager.lua) posts Alertmanager v4 payloads of 1, 10 and 100 new alerts
at 32 connections from 2 threads to (a) a FastAPI route that only reads the body, under
uvicorn with its h11 parser and with uvloop+httptools, and (b) `vigil up`, which answers 2xx
only after JetStream acked every event. After each run, Vigil's own counters (GET /metrics)
and the events in VIGIL_EVENTS are checked against the 2xx answers wrk saw; a run with any
other answer or any gap is reported invalid. Raw `publish_async` of alert events is the third
column.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import nats
from nats.js import JetStreamContext

from bench.durability import Ingest, projector_lag, settled_tally
from bench.eventlog import raw_publish
from bench.loadgen import CONNECTIONS, THREADS, LoadgenError, WrkRun, run_wrk, wrk_binary
from bench.servers import HttpConfig, ServerError, bare_endpoint, vigil_up
from eventlog.envelope import Event, new_event
from eventlog.payloads import AnomalyDetected
from eventlog.stream import connect, ensure_streams
from vigil.broker import EmbeddedNats
from vigil.tuning import tune_gc

SIZES = (1, 10, 100)
BARE = (HttpConfig("asyncio", "h11"), HttpConfig("uvloop", "httptools"))
VIGIL_HTTP = HttpConfig("uvloop", "httptools")  # what `vigil up` serves with
TOKEN = "bench-token"
WARMUP_SECONDS = 2.0


def alert_events(n: int, run_id: int) -> list[Event]:
    """Events shaped like the receiver's (AnomalyDetected of a new alert), for raw publish."""
    starts = datetime(2026, 11, 24, 12, 8, 45, tzinfo=UTC)
    out = []
    for i in range(n):
        labels = {"alertname": "HighLatency", "cluster": f"c{run_id}-{i // 100}",
                  "instance": f"10.0.{i % 256}.{i // 256 % 256}:9100", "job": "api",
                  "service": f"svc-{i % 50}", "severity": "critical"}  # fmt: skip
        data = AnomalyDetected(
            origin="alertmanager", name="HighLatency", fingerprint=f"{run_id:04x}{i:012x}",
            starts_at=starts + timedelta(microseconds=i), labels=labels,
            annotations={"summary": f"p99 latency over 2s on {labels['instance']}",
                         "runbook_url": "https://runbooks.example.com/HighLatency"},
            service=labels["service"], severity="critical",
            generator_url="http://prometheus:9090/graph?g0.expr=histogram_quantile%280.99%29",
            group_key=f'{{}}:{{alertname="HighLatency",cluster="{labels["cluster"]}",'
                      f'service="{labels["service"]}"}}',
        )  # fmt: skip
        out.append(new_event(data, incident_id=f"am-{i % 5000:024x}", source="alertmanager"))
    return out


async def raw_publish_rate(tmp: Path, n: int, run_id: int) -> float:
    """publish_async of alert events, all in flight, every ack checked (bench.eventlog's)."""
    server = EmbeddedNats(store_dir=tmp / "nats-raw")
    await server.start()
    nc = await connect(server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        return await raw_publish(js, alert_events(n, run_id))
    finally:
        await nc.close()
        await server.stop()


async def measure_bare(config: HttpConfig, seconds: float, run_id: int) -> dict[int, WrkRun]:
    out: dict[int, WrkRun] = {}
    async with bare_endpoint(config) as url:
        for size in SIZES:
            await run_wrk(url, alerts=size, token=TOKEN, run_id=run_id, seconds=WARMUP_SECONDS)
            out[size] = await run_wrk(url, alerts=size, token=TOKEN, run_id=run_id, seconds=seconds)
    return out


async def measure_vigil(
    tmp: Path, seconds: float, run_id: int, duplicates: bool
) -> dict[str, Ingest]:
    """Each payload size of new alerts, then (if asked) the duplicate path, in one `vigil up`."""
    out: dict[str, Ingest] = {}
    async with vigil_up(tmp / "vigil", TOKEN) as vigil:
        nc = await nats.connect(vigil.nats_url)
        js = nc.jetstream()
        try:
            for i, size in enumerate(SIZES):
                warm, measured = run_id * 10 + 2 * i, run_id * 10 + 2 * i + 1
                out[str(size)] = await ingest(js, vigil.url, size, seconds, warm, measured)
            if duplicates:
                for size, dup in ((1, run_id * 10 + 8), (100, run_id * 10 + 9)):
                    # The warm-up stores each thread's body; the measured run only repeats it.
                    out[f"{size} dup"] = await ingest(js, vigil.url, size, seconds, dup, dup, True)
        finally:
            await nc.close()
    return out


async def ingest(
    js: JetStreamContext,
    url: str,
    size: int,
    seconds: float,
    warm: int,
    run: int,
    same: bool = False,
) -> Ingest:
    await run_wrk(url, alerts=size, token=TOKEN, run_id=warm, seconds=WARMUP_SECONDS,
                  same_body=same)  # fmt: skip
    before = await settled_tally(js, url)
    result = await run_wrk(url, alerts=size, token=TOKEN, run_id=run, seconds=seconds,
                           same_body=same)  # fmt: skip
    lag = await projector_lag(js)
    gained = await settled_tally(js, url) - before
    return Ingest(result, gained, lag, expect_new=not same)


async def one_round(
    tmp: Path, seconds: float, run_id: int, duplicates: bool
) -> tuple[dict[str, float], list[str]]:
    """Raw publish, the bare endpoints and Vigil; bare and Vigil swap order every round.
    Returns the figures and, for any run whose figures cannot be used, why."""
    figures: dict[str, float] = {"raw publish": await raw_publish_rate(tmp, 50_000, run_id)}
    problems: list[str] = []
    vigil_first = run_id % 2 == 1
    if vigil_first:
        ours = await measure_vigil(tmp, seconds, run_id, duplicates)
    bare = {c.label: await measure_bare(c, seconds, run_id) for c in BARE}
    if not vigil_first:
        ours = await measure_vigil(tmp, seconds, run_id, duplicates)
    for label, runs in bare.items():
        for size, r in runs.items():
            problems += [f"bare {label}, {size} alerts: {p}" for p in r.problems]
            figures |= {f"{label} {size} req/s": r.req_s, f"{label} {size} p99": r.p99_ms}
    for key, m in ours.items():
        problems += [f"vigil, {key} alerts: {p}" for p in m.problems]
        figures |= {
            f"vigil {key} req/s": m.run.req_s,
            f"vigil {key} alerts/s": m.run.alerts_s,
            f"vigil {key} p50": m.run.p50_ms,
            f"vigil {key} p99": m.run.p99_ms,
            f"vigil {key} lag": m.projector_lag,
            f"vigil {key} in flight": m.in_flight,
        }
    return figures, problems


async def main(seconds: float, rounds: int, duplicates: bool) -> None:
    try:
        wrk_binary()
    except LoadgenError as exc:
        sys.exit(str(exc))
    tune_gc()  # as the `vigil` command runs, for raw publish here as for Vigil over there
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, uvicorn {version('uvicorn')}, uvloop {version('uvloop')}, "
          f"fastapi {version('fastapi')}, nats-py {version('nats-py')}; {commit()}")  # fmt: skip
    print(f"wrk: {CONNECTIONS} connections, {THREADS} threads, {seconds:g}s per run after "
          f"{WARMUP_SECONDS:g}s warm-up, {rounds} rounds")  # fmt: skip
    results, problems = [], []
    for round_no in range(1, rounds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                figures, invalid = await one_round(Path(tmp), seconds, round_no, duplicates)
            except (LoadgenError, ServerError) as exc:
                sys.exit(f"round {round_no}: {exc}")
        results.append(figures)
        problems += [f"round {round_no}: {p}" for p in invalid]
        print(round_line(round_no, figures, duplicates))
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    report(med, duplicates)
    print(f"(finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; medians of {rounds} rounds)")
    if problems:
        sys.exit("INVALID, these figures cannot be used:\n" + "\n".join(problems))


def commit() -> str:
    """The commit measured: the receiver changes often, so figures name the code they are of."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"commit {git.stdout.strip()}" if git.returncode == 0 else "not a git checkout"


def round_line(round_no: int, f: dict[str, float], duplicates: bool) -> str:
    """req/s per payload size; for Vigil also p99 and the requests still in flight when wrk
    stopped (answered and stored, but not counted by wrk)."""
    bare = "; ".join(
        f"bare {c.label} " + "/".join(f"{f[f'{c.label} {s} req/s']:,.0f}" for s in SIZES)
        for c in BARE
    )
    keys = [str(s) for s in SIZES] + (["1 dup", "100 dup"] if duplicates else [])
    ours = "; ".join(
        f"{k}: {f[f'vigil {k} req/s']:,.0f} p99 {f[f'vigil {k} p99']:.1f} ms"
        f" (+{f[f'vigil {k} in flight']:,.0f} in flight)"
        for k in keys
    )
    return f"  round {round_no}: raw {f['raw publish']:,.0f} msg/s; {bare}; vigil {ours}"


def report(med: dict[str, float], duplicates: bool) -> None:
    raw = med["raw publish"]
    print(f"raw publish_async of alert events: {raw:,.0f} msg/s; vigil, 100 alerts a request: "
          f"{med['vigil 100 alerts/s'] / raw:.2f} of it")  # fmt: skip
    bare_cols = " | ".join(f"bare {c.label} req/s (p99)" for c in BARE)
    print(f"| alerts/request | {bare_cols} | vigil req/s | vigil alerts/s | p50 | p99 "
          f"| ratio to bare {VIGIL_HTTP.label} | projector lag at end |")  # fmt: skip
    keys = [str(s) for s in SIZES] + (["1 dup", "100 dup"] if duplicates else [])
    for key in keys:
        size = key.split()[0]
        bare = " | ".join(f"{med[f'{c.label} {size} req/s']:,.0f} "
                          f"({med[f'{c.label} {size} p99']:.1f} ms)" for c in BARE)  # fmt: skip
        ratio = med[f"vigil {key} req/s"] / med[f"{VIGIL_HTTP.label} {size} req/s"]
        print(f"| {key} | {bare} | {med[f'vigil {key} req/s']:,.0f} "
              f"| {med[f'vigil {key} alerts/s']:,.0f} | {med[f'vigil {key} p50']:.1f} ms "
              f"| {med[f'vigil {key} p99']:.1f} ms | {ratio:.2f} "
              f"| {med[f'vigil {key} lag']:,.0f} |")  # fmt: skip
    big, one = med["vigil 100 alerts/s"], med["vigil 1 req/s"]
    ratio, p99 = one / med[f"{VIGIL_HTTP.label} 1 req/s"], med["vigil 1 p99"]
    met = {True: "met", False: "missed"}
    print(f"targets: 100 alerts a request >= 20,000 alerts/s: {big:,.0f}, {met[big >= 20_000]}; "
          f"1 alert >= 0.5x bare with p99 < 25 ms: {ratio:.2f}x, {p99:.1f} ms, "
          f"{met[ratio >= 0.5 and p99 < 25]}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-duplicates", action="store_true", help="skip the duplicate path")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds, not args.no_duplicates))
