"""Benchmark: our publisher and projector against the raw libraries, same run, same events.

    python -m bench.eventlog [--events N] [--rounds R]

Publish: EventPublisher.publish_many vs raw nats-py `publish_async` + `publish_async_completed`
(every ack checked). Projection: our Projector (events + read models + checkpoint, pipelined)
vs a raw pipeline: pull fetch(1000), orjson, one Arrow table per batch, INSERT ... SELECT plus
the checkpoint update in one transaction, ack-all after commit. Prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import duckdb
import nats
import orjson
import pyarrow as pa
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventlog.envelope import Event, new_event
from eventlog.payloads import AgentStep, ToolCompleted, ToolRequested
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from eventlog.store import ProjectionStore
from eventlog.stream import EVENTS_STREAM, connect, ensure_streams
from vigil.broker import EmbeddedNats
from vigil.tuning import tune_gc

# A model request and its response as pydantic-ai writes them, cut to one short part each.
REQUEST = {"kind": "request", "parts": [{"part_kind": "user-prompt", "content": "p99 is up"}]}
RESPONSE = {"kind": "response", "model_name": "builtin", "parts": [
    {"part_kind": "tool-call", "tool_name": "prom_query", "args": {"q": "up"}, "tool_call_id": "c"}
]}  # fmt: skip


def make_events(n: int) -> list[Event]:
    """A plausible investigation mix: agent steps, tool requests and their results."""
    out: list[Event] = []
    for i in range(n):
        incident = f"inc-{i % 200}"
        kind = i % 3
        if kind == 0:
            data = AgentStep(attempt=1, step=i // 3, turn=i % 7, model="builtin", request=REQUEST,
                             response=RESPONSE, input_tokens=900, output_tokens=40)  # fmt: skip
        elif kind == 1:
            data = ToolRequested(tool_call_id=f"c{i}", tool_name="prom_query", args={"q": "up"})
        else:
            data = ToolCompleted(tool_call_id=f"c{i - 1}", tool_name="prom_query", duration_ms=3)
        out.append(new_event(data, incident_id=incident, source="bench"))
    return out


async def raw_publish(js: nats.js.JetStreamContext, events: list[Event]) -> float:
    """The same work with nothing of ours: serialize, set the msg id, publish_async, check."""
    start = time.perf_counter()
    futures = [
        await js.publish_async(e.subject, e.to_json(), headers={"Nats-Msg-Id": str(e.id)})
        for e in events
    ]
    await js.publish_async_completed()
    for f in futures:
        assert f.result().stream == EVENTS_STREAM
    return len(events) / (time.perf_counter() - start)


async def our_publish(js: nats.js.JetStreamContext, events: list[Event]) -> float:
    publisher = EventPublisher(js)
    start = time.perf_counter()
    await publisher.publish_many(events)
    return len(events) / (time.perf_counter() - start)


RAW_DDL = """
CREATE TABLE events (seq BIGINT, id UUID UNIQUE, type VARCHAR, incident_id VARCHAR,
  occurred_at TIMESTAMPTZ, source VARCHAR, causation_id UUID, correlation_id UUID,
  schema_version INTEGER, data JSON);
CREATE TABLE checkpoint (stream VARCHAR PRIMARY KEY, last_seq BIGINT);
"""
COLUMNS = ("id", "type", "incident_id", "occurred_at", "source", "causation_id")


async def raw_project(js: nats.js.JetStreamContext, path: Path, total: int) -> float:
    con = duckdb.connect(str(path))
    con.execute(RAW_DDL)
    await js.add_consumer(
        EVENTS_STREAM,
        ConsumerConfig(
            durable_name="raw-bench",
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=3000,
        ),
    )
    sub = await js.pull_subscribe_bind("raw-bench", stream=EVENTS_STREAM)
    done = 0
    start = time.perf_counter()
    while done < total:
        msgs = await sub.fetch(1000, timeout=5)
        rows = [orjson.loads(m.data) for m in msgs]
        cols = {c: [r[c] for r in rows] for c in COLUMNS}
        table = pa.table(
            {
                "seq": [m.metadata.sequence.stream for m in msgs],
                **cols,
                "correlation_id": [r["correlation_id"] for r in rows],
                "schema_version": [r["schema_version"] for r in rows],
                "data": [orjson.dumps(r["data"]).decode() for r in rows],
            }
        )
        con.begin()
        con.register("batch", table)
        con.execute(
            "INSERT INTO events SELECT seq, id::UUID, type, incident_id, "
            "occurred_at::TIMESTAMPTZ, source, causation_id::UUID, correlation_id::UUID, "
            "schema_version, data FROM batch"
        )
        con.execute("INSERT OR REPLACE INTO checkpoint VALUES ('e', ?)", [table["seq"][-1].as_py()])
        con.commit()
        await msgs[-1].ack()
        done += len(msgs)
    rate = total / (time.perf_counter() - start)
    await sub.unsubscribe()
    con.close()
    return rate


async def our_project(js: nats.js.JetStreamContext, path: Path, total: int, last: int) -> float:
    store = ProjectionStore(path)
    projector = Projector(js, store)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    await projector.following.wait()  # like raw: the clock starts once subscribed
    start = time.perf_counter()
    await projector.wait_for(last)
    rate = total / (time.perf_counter() - start)
    stop.set()
    await task
    store.close()
    return rate


async def sync_always_publish(tmp: Path, n: int) -> float:
    """Our publisher against a broker that fsyncs every write (VIGIL_NATS_SYNC_ALWAYS)."""
    server = EmbeddedNats(store_dir=tmp / "nats-sync", sync_always=True)
    await server.start()
    nc = await connect(server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        return await our_publish(js, make_events(n))
    finally:
        await nc.close()
        await server.stop()


async def one_round(tmp: Path, n: int, ours_first: bool) -> dict[str, float]:
    """One measurement of each; `ours_first` alternates who goes first between rounds."""
    server = EmbeddedNats(store_dir=tmp / "nats")
    await server.start()
    nc = await connect(server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    try:
        # Each publish goes into an emptied stream; the second one's events are projected.
        first, second = (our_publish, raw_publish) if ours_first else (raw_publish, our_publish)
        a = await first(js, make_events(n))
        await js.purge_stream(EVENTS_STREAM)
        b = await second(js, make_events(n))
        raw, ours = (b, a) if ours_first else (a, b)
        last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        if ours_first:
            ours_p = await our_project(js, tmp / "ours.duckdb", n, last)
            raw_p = await raw_project(js, tmp / "raw.duckdb", n)
        else:
            raw_p = await raw_project(js, tmp / "raw.duckdb", n)
            ours_p = await our_project(js, tmp / "ours.duckdb", n, last)
    finally:
        await nc.close()
        await server.stop()
    synced = await sync_always_publish(tmp, min(n, 20_000))
    return {"raw_pub": raw, "our_pub": ours, "raw_proj": raw_p, "our_proj": ours_p, "sync": synced}


async def main(n: int, rounds: int) -> None:
    tune_gc()  # as the `vigil` command runs; raw and ours share the process, so both get it
    sample = make_events(3)
    sizes = [len(e.to_json()) for e in sample]
    versions = f"nats-py {version('nats-py')}, duckdb {duckdb.__version__}"
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, {versions}")
    print(f"events: {n} per round, envelope sizes {sizes} bytes, {rounds} rounds")
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(await one_round(Path(tmp), n, ours_first=len(results) % 2 == 1))
        r = results[-1]
        print(f"  round {len(results)}: publish {r['raw_pub']:,.0f} / {r['our_pub']:,.0f},"
              f" project {r['raw_proj']:,.0f} / {r['our_proj']:,.0f},"
              f" fsync {r['sync']:,.0f}")  # fmt: skip
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    report("publish", "raw publish_async", med["raw_pub"], med["our_pub"], "msg/s")
    report("project", "raw pipeline", med["raw_proj"], med["our_proj"], "ev/s")
    report("fsync", "default sync", med["our_pub"], med["sync"], "msg/s")
    print(f"(finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; medians of {rounds} rounds)")


def report(what: str, raw_name: str, raw: float, ours: float, unit: str) -> None:
    print(f"{what:<9} {raw_name:<18} {raw:>9,.0f} {unit} | ours {ours:>9,.0f} {unit}"
          f" | ratio {ours / raw:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds))
