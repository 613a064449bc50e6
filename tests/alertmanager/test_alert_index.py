"""The alert index on a real JetStream KV bucket: replicas, expiry, size, refresh."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from alertmanager.alert_index import ALERTS_BUCKET, MAX_RECORD_BYTES, AlertIndex
from alertmanager.correlation import AlertMemory, GroupMemory, memory_key

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
GROUP = '{}:{alertname="Down"}'


def remember(group: GroupMemory, aid: str, *, ended: bool = False) -> None:
    group.alerts[aid] = AlertMemory(
        incident_id="am-1", stored=["firing"], starts_at=T0, ends_at=T0 if ended else None
    )


async def stored_group(js: JetStreamContext) -> GroupMemory:
    entry = await (await js.key_value(ALERTS_BUCKET)).get(memory_key("g", GROUP))
    assert entry.value is not None
    return GroupMemory.model_validate_json(entry.value)


async def test_two_replicas_writing_one_group_keep_both_alerts(js: JetStreamContext) -> None:
    a, b = await AlertIndex.open(js), await AlertIndex.open(js)
    slot_a, _ = await a.load(GROUP, set())
    slot_b, _ = await b.load(GROUP, set())  # both read before either wrote
    assert slot_a.record is not None and slot_b.record is not None
    remember(slot_a.record, "a1")
    slot_a.changed()
    await a.save(slot_a)
    remember(slot_b.record, "b1")
    slot_b.changed()
    await b.save(slot_b)  # conflicts with a's write: merges, then writes on top
    assert set((await stored_group(js)).alerts) == {"a1", "b1"}
    assert set(slot_b.record.alerts) == {"a1", "b1"}


async def test_a_record_gone_from_kv_is_written_again(js: JetStreamContext) -> None:
    """Expired (KV max age) or deleted while this process still holds it: not a 503 forever."""
    index = await AlertIndex.open(js)
    slot, _ = await index.load(GROUP, set())
    assert slot.record is not None
    remember(slot.record, "a1")
    slot.changed()
    await index.save(slot)
    await (await js.key_value(ALERTS_BUCKET)).delete(memory_key("g", GROUP))
    remember(slot.record, "a2")
    slot.changed()
    await index.save(slot)
    assert set((await stored_group(js)).alerts) == {"a1", "a2"}


async def test_a_huge_group_is_cut_to_fit_one_message(js: JetStreamContext) -> None:
    index = await AlertIndex.open(js)
    slot, _ = await index.load(GROUP, set())
    assert slot.record is not None
    for i in range(3000):
        remember(slot.record, f"ended{i:05}", ended=True)
    for i in range(9000):
        remember(slot.record, f"firing{i:05}")
        slot.record.alerts[f"firing{i:05}"].starts_at = T0 + timedelta(seconds=i)
    slot.changed()
    await index.save(slot)
    kept = await stored_group(js)
    assert len(kept.model_dump_json()) <= MAX_RECORD_BYTES
    assert not any(aid.startswith("ended") for aid in kept.alerts)  # the ended go first
    assert "firing08999" in kept.alerts and "firing00000" not in kept.alerts  # then the oldest


async def test_a_record_in_use_is_rewritten_before_kv_would_expire_it(js: JetStreamContext) -> None:
    await AlertIndex.open(js)  # creates the bucket
    kv = await js.key_value(ALERTS_BUCKET)
    fresh = AlertIndex(kv)
    expiring = AlertIndex(kv, ttl=0.0)  # every write is already half its max age old
    for index, rewrites in ((fresh, False), (expiring, True)):
        slot, _ = await index.load(GROUP, set())
        slot.changed()
        await index.save(slot)
        written = slot.revision
        await index.save(slot)  # nothing changed
        assert (slot.revision != written) is rewrites


async def test_following_replicas_see_each_others_writes_and_new_keys_cost_no_read(
    js: JetStreamContext, nc: NATS
) -> None:
    a = await AlertIndex.open(js, follow=nc)
    b = await AlertIndex.open(js, follow=nc)
    slot_a, _ = await a.load(GROUP, set())  # not in the bucket: known without a read
    assert slot_a.revision == 0 and slot_a.record is not None
    remember(slot_a.record, "a1")
    slot_a.changed()
    await a.save(slot_a)
    slot_b, _ = await b.load(GROUP, set())
    assert slot_b.record is not None and set(slot_b.record.alerts) == {"a1"}
    remember(slot_b.record, "b1")
    slot_b.changed()
    await b.save(slot_b)
    await asyncio.wait_for(a.overwritten.wait(), 5)  # b's write, seen by a
    assert slot_a.stale
    assert not slot_b.stale  # its own write's echo is not news
    again, _ = await a.load(GROUP, set())
    assert again.record is not None and set(again.record.alerts) == {"a1", "b1"}
