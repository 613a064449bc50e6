"""The alert index on a real JetStream KV bucket: replicas, conflicts, expiry, size, refresh."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from alertmanager.alert_index import ALERTS_BUCKET, MAX_RECORD_BYTES, AlertIndex, Conflict
from alertmanager.memory import AlertMemory, GroupMemory, ServiceMemory, memory_key

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
GROUP = '{}:{alertname="Down"}'


def remember(group: GroupMemory | None, aid: str, *, ended: bool = False) -> None:
    assert group is not None
    group.alerts[aid] = AlertMemory(
        incident_id="am-1", stored=["firing"], starts_at=T0, ends_at=T0 if ended else None
    )


async def stored_group(js: JetStreamContext, group: str = GROUP) -> GroupMemory:
    entry = await (await js.key_value(ALERTS_BUCKET)).get(memory_key("g", group))
    assert entry.value is not None
    return GroupMemory.model_validate_json(entry.value)


async def test_a_replica_that_decided_on_an_old_record_must_decide_again(
    js: JetStreamContext,
) -> None:
    a, b = await AlertIndex.open(js), await AlertIndex.open(js)
    held_a = await a.hold(GROUP, set())
    held_b = await b.hold(GROUP, set())  # both read before either wrote
    remember(held_a.group.record, "a1")
    remember(held_b.group.record, "b1")
    await a.commit(held_a, [], group=True)
    with pytest.raises(Conflict):
        await b.commit(held_b, [], group=True)
    held_b.release()
    held_b = await b.hold(GROUP, set())  # read again: a's, without b's decision
    assert held_b.group.record is not None and set(held_b.group.record.alerts) == {"a1"}
    remember(held_b.group.record, "b1")  # decided again
    await b.commit(held_b, [], group=True)
    assert set((await stored_group(js)).alerts) == {"a1", "b1"}
    held_a.release()
    held_b.release()


async def test_two_replicas_opening_an_incident_for_one_service_agree_on_one(
    js: JetStreamContext,
) -> None:
    """Different groups of one service at two replicas, both before either wrote: the
    service record is compare-and-set, so the second learns the first's incident before it
    publishes anything."""
    a, b = await AlertIndex.open(js), await AlertIndex.open(js)
    held_a = await a.hold("g1", {"cart"})
    held_b = await b.hold("g2", {"cart"})
    assert held_a.services["cart"].record is None and held_b.services["cart"].record is None
    held_a.services["cart"].record = ServiceMemory(incident_id="am-a", last_fired_at=T0)
    held_b.services["cart"].record = ServiceMemory(incident_id="am-b", last_fired_at=T0)
    await a.commit(held_a, [held_a.services["cart"]], group=True)
    with pytest.raises(Conflict) as conflict:
        await b.commit(held_b, [held_b.services["cart"]], group=True)
    assert conflict.value.written == {}  # b wrote nothing
    held_b.release()
    held_b = await b.hold("g2", {"cart"})
    cart = held_b.services["cart"].record
    assert cart is not None and cart.incident_id == "am-a"
    assert held_b.group.record == GroupMemory()  # nothing of b's first decision was written
    held_a.release()
    held_b.release()


async def test_requests_sharing_a_record_in_one_process_take_turns(js: JetStreamContext) -> None:
    """The storm race: a second group of one service must wait for the first's decision to be
    written, and then sees it (one record object per key, never two)."""
    index = await AlertIndex.open(js)
    first = await index.hold("g1", {"cart"})
    second = asyncio.create_task(index.hold("g2", {"cart"}))
    done, _ = await asyncio.wait({second}, timeout=0.3)  # a thing that must not happen: bounded
    assert not done
    first.services["cart"].record = ServiceMemory(incident_id="am-1", last_fired_at=T0)
    await index.commit(first, [first.services["cart"]], group=True)
    first.release()
    held = await asyncio.wait_for(second, 5)
    assert held.services["cart"] is first.services["cart"]
    assert held.services["cart"].record is not None
    assert held.services["cart"].record.incident_id == "am-1"
    held.release()


async def test_a_hold_given_up_leaves_nothing_locked(js: JetStreamContext) -> None:
    index = await AlertIndex.open(js)
    first = await index.hold("g1", {"cart"})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await index.hold("g2", {"api", "cart"})  # waits for cart, holding api
    first.release()
    held = await asyncio.wait_for(index.hold("g3", {"api"}), 5)  # api was let go
    held.release()


async def test_events_marked_stored_survive_a_conflict(js: JetStreamContext) -> None:
    a, b = await AlertIndex.open(js), await AlertIndex.open(js)
    held_a = await a.hold(GROUP, set())
    remember(held_a.group.record, "x")
    held_a.group.record.alerts["x"].stored = []  # type: ignore[union-attr]
    await a.commit(held_a, [], group=True)
    held_b = await b.hold(GROUP, set())
    remember(held_b.group.record, "y")
    await b.commit(held_b, [], group=True)  # a's copy is now old
    held_b.release()
    held_a.group.record.alerts["x"].stored.append("firing")  # type: ignore[union-attr]
    held_a.group.marks.add(("x", "firing"))  # JetStream acked x's firing
    held_a.group.dirty = True
    held_a.release()
    await a.flush(held_a.group)  # conflicts, reads b's record, marks x again, writes
    kept = await stored_group(js)
    assert set(kept.alerts) == {"x", "y"} and kept.alerts["x"].stored == ["firing"]


async def test_a_record_gone_from_kv_is_written_again(js: JetStreamContext) -> None:
    """Expired (KV max age) or deleted while this process still holds it: not a 503 forever."""
    index = await AlertIndex.open(js)
    held = await index.hold(GROUP, set())
    remember(held.group.record, "a1")
    await index.commit(held, [], group=True)
    held.release()
    await (await js.key_value(ALERTS_BUCKET)).delete(memory_key("g", GROUP))
    for _ in range(2):  # the first decision meets the tombstone, and is made again
        held = await index.hold(GROUP, set())
        remember(held.group.record, "a2")
        try:
            await index.commit(held, [], group=True)
            break
        except Conflict:
            pass
        finally:
            held.release()
    assert set((await stored_group(js)).alerts) == {"a2"}


@pytest.mark.parametrize("limit", [MAX_RECORD_BYTES, 200_000])
async def test_a_huge_group_is_cut_to_fit_one_message(js: JetStreamContext, limit: int) -> None:
    """`limit`: a NATS server whose max_payload is under the default 1 MB."""
    index = await AlertIndex.open(js, max_record_bytes=limit)
    held = await index.hold(GROUP, set())
    group = held.group.record
    assert group is not None
    for i in range(3000):
        remember(group, f"ended{i:05}", ended=True)
    for i in range(9000):
        remember(group, f"firing{i:05}")
        group.alerts[f"firing{i:05}"].starts_at = T0 + timedelta(seconds=i)
    await index.commit(held, [], group=True)
    held.release()
    kept = await stored_group(js)
    assert len(kept.model_dump_json()) <= limit
    assert not any(aid.startswith("ended") for aid in kept.alerts)  # the ended go first
    assert "firing08999" in kept.alerts and "firing00000" not in kept.alerts  # then the oldest


async def test_a_record_in_use_is_rewritten_before_kv_would_expire_it(js: JetStreamContext) -> None:
    await AlertIndex.open(js)  # creates the bucket
    kv = await js.key_value(ALERTS_BUCKET)
    fresh = AlertIndex(kv)
    expiring = AlertIndex(kv, ttl=0.0)  # every write is already half its max age old
    for index, rewrites in ((fresh, False), (expiring, True)):
        held = await index.hold(GROUP, set())
        remember(held.group.record, "a1")
        await index.commit(held, [], group=True)
        held.release()
        written = held.group.revision
        await index.flush(held.group)  # nothing changed
        assert (held.group.revision != written) is rewrites


async def test_following_replicas_see_each_others_writes_and_new_keys_cost_no_read(
    js: JetStreamContext, nc: NATS
) -> None:
    a = await AlertIndex.open(js, follow=nc)
    b = await AlertIndex.open(js, follow=nc)
    held_a = await a.hold(GROUP, set())  # not in the bucket: known without a read
    assert held_a.group.revision == 0 and held_a.group.record == GroupMemory()
    remember(held_a.group.record, "a1")
    await a.commit(held_a, [], group=True)
    held_a.release()
    held_b = await b.hold(GROUP, set())
    assert held_b.group.record is not None and set(held_b.group.record.alerts) == {"a1"}
    remember(held_b.group.record, "b1")
    await b.commit(held_b, [], group=True)
    held_b.release()
    async with asyncio.timeout(5):  # b's write, seen by a on the bucket's subject
        while not held_a.group.stale:  # noqa: ASYNC110  (the index has no event to await)
            await asyncio.sleep(0.01)
    assert not held_b.group.stale  # its own write's echo is not news
    again = await a.hold(GROUP, set())
    assert again.group.record is not None and set(again.group.record.alerts) == {"a1", "b1"}
    again.release()
