"""A real 3-node NATS cluster on loopback (three nats-server processes with routes, streams
with 3 replicas): one node is killed with SIGKILL while events are published and projected, and
every event the publisher reported as stored is in DuckDB exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck

from eventlog.envelope import Event, new_event
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher, PublishError
from eventlog.store import ProjectionStore
from eventlog.stream import EVENTS_STREAM, connect, ensure_streams
from tests.eventlog.samples import agent_step
from tests.eventlog.stream_reading import stream_events
from vigil.broker import ClusterPeer, EmbeddedNats

log = logging.getLogger(__name__)
T = TypeVar("T")

NODES = 3
BATCH = 200
BATCHES = 30  # 6000 events
KILL_AT_BATCH = 8
BURST = 5  # batches published at once around the kill
ACK_TIMEOUT = 2.0
MAX_ATTEMPTS = 40  # per batch, first publish included; enough for a leader election or two
SETUP_DEADLINE = 30.0
CATCH_UP_DEADLINE = 60.0


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports nobody listens on (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


async def retry(what: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Retry a JetStream API call until the cluster can answer it (no event tells us when)."""
    end = time.monotonic() + deadline
    while True:
        try:
            return await call()
        except nats.errors.Error as exc:
            if time.monotonic() > end:
                raise AssertionError(f"{what}: cluster not ready after {deadline:g}s") from exc
            log.debug("%s: %r, retrying", what, exc)
            await asyncio.sleep(0.1)


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[list[EmbeddedNats]]:
    """Three clustered nats-server processes with JetStream on loopback, stopped at teardown."""
    ports = free_ports(2 * NODES)
    client_ports, route_ports = ports[:NODES], ports[NODES:]
    nodes = [
        EmbeddedNats(
            store_dir=tmp_path / f"nats-{i}",
            port=client_ports[i],
            cluster=ClusterPeer(
                name=f"n{i}",
                cluster_port=route_ports[i],
                routes=[p for j, p in enumerate(route_ports) if j != i],
            ),
        )
        for i in range(NODES)
    ]
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


@pytest.fixture
async def cluster_urls(nats_cluster: list[EmbeddedNats]) -> AsyncIterator[str]:
    """All nodes' URLs, comma-joined, once JetStream has a meta leader and the streams exist."""
    urls = ",".join(node.url for node in nats_cluster)
    admin = await connect(urls, name="vigil-test-admin")
    try:
        js = admin.jetstream(timeout=1.0)
        await retry("ensure_streams", lambda: ensure_streams(js, replicas=NODES), SETUP_DEADLINE)
    finally:
        await admin.close()
    yield urls


async def connect_via(urls: str, node: EmbeddedNats, name: str) -> NATS:
    """A client given every node's URL that happens to be connected to `node`: nats-py picks a
    random server of the list, so connect again until it picks that one."""
    for _ in range(100):
        client = await connect(urls, name=name)
        if client.connected_url and client.connected_url.port == node.port:
            return client
        await client.close()
    raise AssertionError(f"{name} never connected to {node.url}")


def victim(nodes: list[EmbeddedNats]) -> EmbeddedNats:
    """The node that will be killed: both clients' server and every leader that matters."""
    return nodes[0]


@pytest.fixture
async def publisher_nc(nats_cluster: list[EmbeddedNats], cluster_urls: str) -> AsyncIterator[NATS]:
    """The publisher's client: every node's URL given, connected to the victim."""
    client = await connect_via(cluster_urls, victim(nats_cluster), "vigil-test-publisher")
    yield client
    await client.close()


@pytest.fixture
async def projector_nc(nats_cluster: list[EmbeddedNats], cluster_urls: str) -> AsyncIterator[NATS]:
    """The projector's client: every node's URL given, connected to the victim."""
    client = await connect_via(cluster_urls, victim(nats_cluster), "vigil-test-projector")
    yield client
    await client.close()


@pytest.fixture
def cluster_store(tmp_path: Path) -> Iterator[ProjectionStore]:
    """The DuckDB file the projector writes, closed at teardown."""
    store = ProjectionStore(tmp_path / "vigil.duckdb")
    yield store
    store.close()


async def move_leader(
    nc: NATS, stepdown: str, leader: Callable[[], Awaitable[str | None]], name: str
) -> None:
    """Ask a stream's or consumer's leader to step down (`stepdown`: its API subject) in
    favour of server `name` (nats-server 2.11+), until `name` leads it."""
    body = b'{"placement": {"preferred": "%s"}}' % name.encode()
    for _ in range(5):
        before = await retry(stepdown, leader, SETUP_DEADLINE)
        if before == name:
            return
        with contextlib.suppress(nats.errors.Error):
            await nc.request(stepdown, body, timeout=5)
        # The election that follows has no event to wait on: poll for its outcome.
        end = time.monotonic() + SETUP_DEADLINE
        while time.monotonic() < end:
            with contextlib.suppress(nats.errors.Error):
                if (await leader()) not in (None, "", before):
                    break
            await asyncio.sleep(0.05)
    if await retry(stepdown, leader, SETUP_DEADLINE) != name:
        raise AssertionError(f"{stepdown}: the leader did not move to {name}")


class Tally:
    """What the publisher was told about each event."""

    def __init__(self) -> None:
        self.acked: dict[uuid.UUID, PubAck] = {}
        self.failures: list[tuple[float, uuid.UUID, str]] = []  # (monotonic time, id, reason)
        self.retries = 0
        self.duplicates = 0  # acks saying JetStream had stored the event already

    async def publish(self, publisher: EventPublisher, batch: list[Event]) -> None:
        """Publish a batch, retrying the unacknowledged events (same ids) a bounded number of
        times; whatever is still unacknowledged after that stays out of `acked`."""
        todo = batch
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.retries += 1
                await asyncio.sleep(min(0.1 * attempt, 1.0))  # back-off, not synchronisation
            try:
                acks = await publisher.publish_many(todo)
            except PublishError as err:
                self.acked.update(err.acked)
                self.duplicates += sum(ack.duplicate or False for ack in err.acked.values())
                now = time.monotonic()
                self.failures.extend((now, id_, reason) for id_, reason in err.failed.items())
                todo = [e for e in todo if e.id in err.failed]
            else:
                self.acked.update(zip((e.id for e in todo), acks, strict=True))
                self.duplicates += sum(ack.duplicate or False for ack in acks)
                return


async def stream_leader(js: JetStreamContext) -> str | None:
    info = await js.stream_info(EVENTS_STREAM)
    return info.cluster.leader if info.cluster else None


async def consumer_leader(js: JetStreamContext, durable: str) -> str | None:
    info = await js.consumer_info(EVENTS_STREAM, durable)
    return info.cluster.leader if info.cluster else None


async def found_in_stream(js: JetStreamContext, ids: set[uuid.UUID]) -> str:
    """For a failure message: are these events in the stream (the projector skipped them)?"""
    try:
        events = await retry(
            "read the stream back",
            lambda: stream_events(js, f"test-reader-{uuid.uuid4().hex[:8]}"),
            SETUP_DEADLINE,
        )
    except AssertionError as exc:
        return f"reading the stream back failed: {exc.__cause__!r}"
    return f"{len(ids & {e.id for e in events})} of them are in the stream"


def make_batch(n: int) -> list[Event]:
    return [
        new_event(
            agent_step(i),
            incident_id=f"inc-{n % 7}",
            source="test-cluster",
        )
        for i in range(BATCH)
    ]


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_kill_leader_node_while_publishing_and_projecting(
    nats_cluster: list[EmbeddedNats],
    publisher_nc: NATS,
    projector_nc: NATS,
    cluster_store: ProjectionStore,
) -> None:
    """kill -9 the node that leads the stream and the projector's consumer and that both
    clients are connected to, with a burst of publishes in flight; the other two carry on."""
    node = victim(nats_cluster)
    assert node.cluster is not None
    begun = time.monotonic()
    js = publisher_nc.jetstream()
    quick = publisher_nc.jetstream(timeout=1.0)  # for polls that fail while there is no leader
    await move_leader(
        publisher_nc,
        f"$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}",
        lambda: stream_leader(quick),
        node.cluster.name,
    )
    publisher = EventPublisher(js, ack_timeout=ACK_TIMEOUT)
    tally = Tally()
    batches = [make_batch(n) for n in range(BATCHES)]
    published = [event for batch in batches for event in batch]

    projector = Projector(projector_nc.jetstream(), cluster_store)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        # The projector's consumer exists once it has applied something.
        await tally.publish(publisher, batches[0])
        await asyncio.wait_for(projector.wait_for(1), SETUP_DEADLINE)
        await move_leader(
            publisher_nc,
            f"$JS.API.CONSUMER.LEADER.STEPDOWN.{EVENTS_STREAM}.{projector.durable}",
            lambda: consumer_leader(quick, projector.durable),
            node.cluster.name,
        )

        started = time.monotonic()
        setup_s = started - begun
        for batch in batches[1:KILL_AT_BATCH]:
            await tally.publish(publisher, batch)
        # kill -9 with a burst of publishes and acks in flight, while the projector is applying
        # it: messages on their way to the projector are lost with the node.
        applied = cluster_store.last_seq(EVENTS_STREAM)
        burst = [
            asyncio.create_task(tally.publish(publisher, batch))
            for batch in batches[KILL_AT_BATCH : KILL_AT_BATCH + BURST]
        ]
        await asyncio.wait_for(projector.wait_for(applied + 1), SETUP_DEADLINE)
        killed_at = time.monotonic()
        await node.kill()
        await asyncio.gather(*burst)
        for batch in batches[KILL_AT_BATCH + BURST :]:
            assert not running.done(), f"projector stopped: {running.exception()!r}"
            await tally.publish(publisher, batch)
        published_s = time.monotonic() - started

        info = await retry("stream_info", lambda: js.stream_info(EVENTS_STREAM), SETUP_DEADLINE)
        waiting = asyncio.create_task(projector.wait_for(info.state.last_seq))
        done, _ = await asyncio.wait(
            {waiting, running}, timeout=CATCH_UP_DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()
        assert waiting in done, (
            f"projector at seq {cluster_store.last_seq(EVENTS_STREAM)} of {info.state.last_seq}"
            + (f", stopped: {running.exception()!r}" if running.done() else "")
        )
        caught_up_s = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)

    times = [t - killed_at for t, _, _ in tally.failures]
    summary = (
        f"leaders moved in {setup_s:.1f}s; killed {node.cluster.name}, new stream leader "
        f"{info.cluster.leader if info.cluster else '?'}; "
        f"{len({i for _, i, _ in tally.failures})} events failed "
        f"{len(tally.failures)} publishes "
        f"({', '.join(sorted({r.split(':')[0] for _, _, r in tally.failures}))}) "
        f"from +{min(times, default=0):.2f}s to +{max(times, default=0):.2f}s after the kill, "
        f"{tally.retries} retries, {tally.duplicates} acks were duplicates; "
        f"published {len(published)} in {published_s:.1f}s, all projected after {caught_up_s:.1f}s"
    )
    log.info("%s", summary)

    con = cluster_store.con
    doubled = con.execute("SELECT id, count(*) FROM events GROUP BY id HAVING count(*) > 1")
    assert doubled.fetchall() == [], summary
    stored = {row[0] for row in con.execute("SELECT id FROM events").fetchall()}
    (rows,) = con.execute("SELECT count(*) FROM events").fetchone() or (0,)
    missing = set(tally.acked) - stored
    if missing:
        seqs = sorted(tally.acked[i].seq for i in missing)
        pytest.fail(
            f"{len(missing)} acknowledged events (stream seq {seqs[0]}..{seqs[-1]}) are not in "
            f"DuckDB ({rows} rows, the stream has {info.state.messages} messages); "
            f"{await found_in_stream(js, missing)}; {summary}"
        )
    assert stored <= {e.id for e in published}, summary
    assert rows == info.state.messages, summary
    # Two of three nodes are a quorum: with retries, every event ends up acknowledged.
    assert len(tally.acked) == len(published), summary


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_process_without_the_replicas_setting_does_not_shrink_the_stream(
    cluster_urls: str,
) -> None:
    nc = await connect(cluster_urls, name="vigil-default-replicas")
    try:
        js = nc.jetstream()
        await ensure_streams(js)  # replicas=1, as from a process started without the setting
        info = await js.stream_info(EVENTS_STREAM)
    finally:
        await nc.close()
    assert info.config.num_replicas == NODES
