"""The publisher: acked means stored, dedup by event id, and honesty when the broker is gone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import Counter

import pytest
from nats.js import JetStreamContext

from eventlog.envelope import Event
from eventlog.publisher import EventPublisher, PublishError
from eventlog.stream import EVENTS_STREAM, BusUnreachable, connect, ensure_streams
from tests.eventlog.samples import steps
from tests.eventlog.stream_reading import stream_events
from vigil.broker import EmbeddedNats


async def test_publish_many_stores_every_event_in_order(js: JetStreamContext) -> None:
    events = steps(500)
    acks = await EventPublisher(js).publish_many(events)
    assert [a.seq for a in acks] == list(range(1, 501))
    stored = await stream_events(js)
    assert [e.id for e in stored] == [e.id for e in events]


async def test_republishing_the_same_event_is_dropped(js: JetStreamContext) -> None:
    publisher = EventPublisher(js)
    events = steps(50)
    first = await publisher.publish_many(events)
    again = await publisher.publish_many(events)
    assert not any(a.duplicate for a in first)
    assert all(a.duplicate for a in again)
    assert [a.seq for a in again] == [a.seq for a in first]
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == 50


async def test_stream_setup_is_idempotent_and_updates_settings(js: JetStreamContext) -> None:
    await ensure_streams(js, duplicate_window=30)
    await ensure_streams(js, duplicate_window=30)
    info = await js.stream_info(EVENTS_STREAM)
    assert info.config.duplicate_window == 30
    assert info.config.subjects == ["vigil.evt.>"]


async def test_broker_down_every_event_is_reported_not_stored(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    publisher = EventPublisher(js, ack_timeout=1.0)
    await nats_server.stop()
    events = steps(20)
    with pytest.raises(PublishError) as caught:
        await publisher.publish_many(events)
    assert set(caught.value.failed) == {e.id for e in events}
    assert caught.value.acked == {}
    await nats_server.start()
    # The same events again, once the client is back: stored exactly once.
    await _publish_until_stored(publisher, events)
    stored = await stream_events(js)
    assert Counter(e.id for e in stored) == Counter(e.id for e in events)


async def test_kill_9_while_publishing_loses_nothing_acked_and_doubles_nothing(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    publisher = EventPublisher(js, ack_timeout=1.0)
    batches = [steps(100, incident=f"inc-{i}") for i in range(30)]
    acked: set[uuid.UUID] = set()
    reported: set[uuid.UUID] = set()
    half = asyncio.Event()

    async def publish_all() -> None:
        for i, batch in enumerate(batches):
            if i == len(batches) // 2:
                half.set()
            try:
                await publisher.publish_many(batch)
                acked.update(e.id for e in batch)
            except PublishError as exc:
                acked.update(exc.acked)
                reported.update(exc.failed)
                assert set(exc.acked) | set(exc.failed) == {e.id for e in batch}

    async def outage() -> None:
        await half.wait()
        await nats_server.kill()
        await nats_server.start()

    await asyncio.gather(publish_all(), outage())
    every = [e for b in batches for e in b]
    assert acked | reported == {e.id for e in every}
    # What was acked survived kill -9; what was reported is retried with the same ids.
    await _publish_until_stored(publisher, [e for e in every if e.id in reported])
    stored = Counter(e.id for e in await stream_events(js))
    assert set(stored) == {e.id for e in every}
    assert max(stored.values()) == 1


async def _publish_until_stored(publisher: EventPublisher, events: list[Event]) -> None:
    for _ in range(30):
        try:
            await publisher.publish_many(events)
            return
        except PublishError:
            continue  # the client is still reconnecting; each try is bounded by ack_timeout
    raise AssertionError("events never stored after the broker came back")


async def test_a_closed_connection_is_reported(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    await nc.close()
    events = steps(3)
    with pytest.raises(PublishError) as caught:
        await EventPublisher(js, ack_timeout=1.0).publish_many(events)
    assert set(caught.value.failed) == {e.id for e in events}
    assert "ConnectionClosed" in next(iter(caught.value.failed.values()))


async def test_no_broker_at_first_is_a_clear_error_not_a_hang() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BusUnreachable, match=r"cannot reach NATS at nats://127\.0\.0\.1:1\b"):
        await connect("nats://127.0.0.1:1", first_attempts=2)
    assert loop.time() - started < 10


async def test_a_full_window_fails_the_rest_at_once(nats_server: EmbeddedNats) -> None:
    """With the broker gone and the window of unacked publishes full, the rest of the call
    fails together after one ack_timeout, not one ack_timeout per event."""
    nc = await connect(nats_server.url)
    js = nc.jetstream(publish_async_max_pending=5)
    await ensure_streams(js)
    await nats_server.stop()
    events = steps(40)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishError) as caught:
        await EventPublisher(js, ack_timeout=0.5, max_pending=5).publish_many(events)
    assert loop.time() - started < 3
    assert set(caught.value.failed) == {e.id for e in events}
    assert "unacknowledged" in caught.value.failed[events[-1].id]
    with contextlib.suppress(ConnectionResetError):  # nats-py: closing with no server left
        await nc.close()


async def test_a_caller_deadline_is_kept_while_the_window_is_full(
    nats_server: EmbeddedNats,
) -> None:
    nc = await connect(nats_server.url)
    js = nc.jetstream(publish_async_max_pending=5)
    await ensure_streams(js)
    await nats_server.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await EventPublisher(js, ack_timeout=10, max_pending=5).publish_many(steps(40))
    assert loop.time() - started < 2
    with contextlib.suppress(ConnectionResetError):  # nats-py: closing with no server left
        await nc.close()


async def test_stream_setup_keeps_what_an_operator_set(js: JetStreamContext) -> None:
    info = await js.stream_info(EVENTS_STREAM)
    await js.update_stream(dataclasses.replace(info.config, max_age=7 * 24 * 3600.0))
    await ensure_streams(js, duplicate_window=60)
    after = (await js.stream_info(EVENTS_STREAM)).config
    assert after.max_age == 7 * 24 * 3600.0
    assert after.duplicate_window == 60
