"""Group and service memories (see `correlation`) kept in JetStream KV, so dedup and
correlation hold across restarts, across Vigil replicas, and beyond the stream's duplicate
window (Alertmanager re-sends a firing group every `repeat_interval`, 4h by default).

The records are the place where concurrent notifications meet, so deciding and writing is
optimistic concurrency on the KV revision:
1. `hold` locks the records a notification touches (its group and its services, in key
   order, so one process serialises requests that share one) and reads any record it does
   not hold fresh;
2. the caller decides (`correlate`), changing the records in memory;
3. `commit` writes the changed service records, then the group record, each compare-and-set
   on the revision it read. Only then are the events published, so every published event's
   incident was written where every replica will read it. When another replica wrote first,
   `Conflict` says so and every held record has been read again: decide again on them.

One Slot per key lives in memory: requests for one group or service share it, and a record
another replica wrote (seen on the bucket's subjects) is read again at its next use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue
from pydantic import ValidationError

from alertmanager.memory import GroupMemory, ServiceMemory, memory_key

log = logging.getLogger(__name__)
ALERTS_BUCKET = "VIGIL_ALERTS"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600.0
MAX_RECORD_BYTES = 900_000  # under NATS's default max_payload (1 MB) with headers to spare
FLUSH_RETRIES = 5
# Which events are stored is written this long after the answer (or at shutdown), so one
# write can carry several notifications' worth; until then JetStream's duplicate window (two
# minutes by default) drops what a retry re-publishes, and the projector drops it beyond.
FLUSH_DELAY = 10.0
R = TypeVar("R", GroupMemory, ServiceMemory)


class Conflict(Exception):
    """Another replica wrote a record first; the held records will be read again.

    `written`: service records this attempt wrote before the conflict, with the revision it
    wrote: while KV still holds that revision, the decision behind it, which did not stand,
    is the caller's to take back."""

    def __init__(self, written: dict[Slot[Any], int] | None = None) -> None:
        super().__init__("records changed under this decision")
        self.written = written or {}


@dataclass(eq=False)
class Slot(Generic[R]):
    """One record as this process knows it: the value and the KV revision it was read or
    written at. Its lock is held from deciding to writing (and, for a group, to publishing)."""

    key: str
    kind: type[R]
    record: R | None = None
    revision: int = 0
    loaded: bool = False
    stale: bool = False  # another replica wrote it, or our write's fate is unknown: read again
    dirty: bool = False  # changed here since written
    saved_at: float = -math.inf  # loop time of our last write: never, for a record read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Events stored since the record was last written (alert id, label): put back into the
    # record whenever it is read again, so a conflict does not forget them.
    marks: set[tuple[str, str]] = field(default_factory=set)
    # hash() of the bytes of our latest writes: their echo on the bucket's subject is not news.
    ours: deque[int] = field(default_factory=lambda: deque(maxlen=8))
    flushing: asyncio.Task[None] | None = None


@dataclass
class Held:
    """The records one notification works on, locked until `release` (services first)."""

    group: Slot[GroupMemory]
    services: dict[str, Slot[ServiceMemory]]
    _locked: list[Slot[Any]] = field(default_factory=list)

    def slots(self) -> list[Slot[Any]]:
        return [*self.services.values(), self.group]

    def forget_decision(self) -> None:
        """What was decided in memory is not to be written: read every record again."""
        for slot in self.slots():
            slot.stale = True

    def release_services(self, keep: list[Slot[ServiceMemory]] | None = None) -> None:
        """Other groups of these services may go on: done deciding (and writing `keep`)."""
        for slot in [s for s in self._locked if s is not self.group and s not in (keep or [])]:
            self._locked.remove(slot)
            slot.lock.release()

    def release(self) -> None:
        while self._locked:
            self._locked.pop().lock.release()


class AlertIndex:
    def __init__(
        self,
        kv: KeyValue,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        cache_size: int = 100_000,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._kv = kv
        self._max_record_bytes = max_record_bytes
        self._refresh_after = ttl / 2
        self._cache_size = cache_size
        self._slots: OrderedDict[str, Slot[Any]] = OrderedDict()
        self._keys: set[str] | None = None  # every key in the bucket, when following it
        self._subject_prefix = f"$KV.{kv._name}."  # nats-py keeps it private
        self._flushes: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        replicas: int = 1,
        ttl: float = DEFAULT_TTL_SECONDS,
        follow: NATS | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> AlertIndex:
        """The bucket, created if missing (an existing one keeps its operator's settings).
        `max_record_bytes`: at most this per record (under the server's max_payload)."""
        try:
            kv = await js.key_value(ALERTS_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=ALERTS_BUCKET,
                    description="Vigil: the incident of each Alertmanager alert, what is stored",
                    history=1,
                    ttl=ttl,
                    storage=StorageType.FILE,
                    replicas=replicas,
                )
            )
        index = cls(kv, ttl=ttl, max_record_bytes=max_record_bytes)
        if follow is not None:
            await index._follow(follow)
        return index

    async def _follow(self, nc: NATS) -> None:
        """Watch every write to the bucket (a core subscription: KV writes are messages on
        `$KV.<bucket>.<key>`), then list its keys. A key never seen is then known to be new
        without a read, and a record another replica wrote makes our copy stale."""
        await nc.subscribe(self._subject_prefix + ">", cb=self._on_write)
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            keys = []
        self._keys = set(keys)

    async def _on_write(self, msg: Msg) -> None:
        key = msg.subject[len(self._subject_prefix) :]
        removed = bool(msg.headers) and msg.headers.get("KV-Operation") in ("DEL", "PURGE")
        if self._keys is not None:
            (self._keys.discard if removed else self._keys.add)(key)
        slot = self._slots.get(key)
        if slot is not None and (removed or hash(msg.data) not in slot.ours):
            slot.stale = True  # read again at its next use

    # -- deciding ---------------------------------------------------------------------------

    async def hold(self, group_key: str, services: set[str]) -> Held:
        """Lock and load the records of a group and its services (a record not in KV is
        empty for a group, None for a service). Cancelled or failed: nothing stays locked."""
        names = sorted(services)
        held = Held(
            self._slot(memory_key("g", group_key), GroupMemory),
            {name: self._slot(memory_key("s", name), ServiceMemory) for name in names},
        )
        try:
            for slot in sorted(held.slots(), key=lambda s: s.key):  # one order: no deadlock
                await slot.lock.acquire()
                held._locked.append(slot)
            stale = [s for s in held.slots() if s.stale or not s.loaded]
            if stale:
                await _all(self._read(s) for s in stale)
        except BaseException:
            held.release()
            raise
        return held

    async def commit(self, held: Held, services: list[Slot[ServiceMemory]], group: bool) -> None:
        """Write the changed `services` records, then the group's when `group` changed (or
        it is due for a refresh), each compare-and-set. Raises Conflict when another replica
        wrote first, what NATS raised otherwise; either way every held record is read again
        at its next `hold` (a write that timed out may have landed)."""
        revisions = {s: s.revision for s in services}
        try:
            await _all(self._write(s) for s in services)
            if group or self._due(held.group):
                await self._write(held.group)
        except BaseException as exc:
            # What was decided in memory was not all written: it must not be decided on again
            # (each slot is read again at its next use, or right now for a conflict).
            held.forget_decision()
            if not isinstance(exc, KeyWrongLastSequenceError):
                raise
            raise Conflict(
                {s: s.revision for s in services if s.revision != revisions[s]}
            ) from None

    def flush_later(self, slot: Slot[Any]) -> None:
        """Write the record within FLUSH_DELAY (its events stored since, a refresh), without
        holding up the answer; a notification of the group meanwhile writes it with its
        decision. Until then a retry re-publishes them, which JetStream and the projector
        drop. One flush per record at a time; a failed one stays due for the next write."""
        if slot.flushing is None and (slot.dirty or self._due(slot)):
            slot.flushing = asyncio.create_task(self._flush(slot))
            self._flushes.add(slot.flushing)
            slot.flushing.add_done_callback(self._flushes.discard)

    async def flush(self, slot: Slot[Any]) -> None:
        """Write the record now if it changed or is due; conflicts are read again and retried."""
        async with slot.lock:
            for _ in range(FLUSH_RETRIES):
                if slot.stale:
                    await self._read(slot)
                if not (slot.dirty or self._due(slot)):
                    return
                try:
                    await self._write(slot)
                    return
                except KeyWrongLastSequenceError:
                    slot.stale = True
            raise KeyWrongLastSequenceError(description="record changed under every retry")

    async def close(self) -> None:
        """Write every record waiting for its flush now (at shutdown: what they write saves
        re-publishing after a restart)."""
        self._closing.set()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    # -- records ----------------------------------------------------------------------------

    def _slot(self, key: str, kind: type[R]) -> Slot[R]:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = Slot(key, kind)
            self._evict()
        else:
            self._slots.move_to_end(key)
        return slot

    def _evict(self) -> None:
        """Forget the least recently used records no request holds and nothing waits to write."""
        excess = len(self._slots) - self._cache_size
        if excess <= 0:
            return
        for key in list(itertools.islice(self._slots, excess * 2)):
            if excess <= 0:
                break
            slot = self._slots[key]
            if not (slot.lock.locked() or slot.dirty or slot.marks or slot.flushing):
                del self._slots[key]
                excess -= 1

    async def _flush(self, slot: Slot[Any]) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_DELAY):
                    await self._closing.wait()
            await self.flush(slot)
        except (NatsError, TimeoutError, KeyWrongLastSequenceError) as exc:
            log.warning("alert index %s: not written (%s); it is written with the next change",
                        slot.key, type(exc).__name__)  # fmt: skip
        finally:
            slot.flushing = None

    def _due(self, slot: Slot[Any]) -> bool:
        """Written so long ago that KV's max age nears: a record in use is rewritten, so a
        Watchdog alert firing for months is still known."""
        loop_time = asyncio.get_running_loop().time()
        return slot.record is not None and loop_time - slot.saved_at > self._refresh_after

    async def _read(self, slot: Slot[Any]) -> None:
        """The record as KV holds it (empty when missing, deleted, expired or unreadable),
        with the events stored since its last write marked again."""
        if self._keys is not None and slot.key not in self._keys and not slot.loaded:
            record, revision = None, 0  # new: no round trip to learn that
        else:
            record, revision = await self._get(slot.key, slot.kind)
        if record is None and slot.kind is GroupMemory:
            record = GroupMemory()  # a group always has one
        if isinstance(record, GroupMemory):
            for aid, label in slot.marks:
                memory = record.alerts.get(aid)
                if memory is not None and label not in memory.stored:
                    memory.stored.append(label)
        slot.record, slot.revision = record, revision
        slot.loaded, slot.stale, slot.dirty = True, False, bool(slot.marks)

    async def _get(self, key: str, kind: type[R]) -> tuple[R | None, int]:
        """The record and its revision; none (at the revision a write must name) when the
        key is missing, deleted, expired, or holds what this version cannot read."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as exc:
            # A deleted key has a tombstone: its revision is what the next write must name.
            entry = getattr(exc, "entry", None)
            return None, (entry.revision or 0) if entry is not None else 0
        try:
            return kind.model_validate_json(entry.value or b""), entry.revision or 0
        except ValidationError as exc:
            log.error("alert index %s: unreadable record, starting it afresh: %s", key, exc)
            return None, entry.revision or 0

    async def _write(self, slot: Slot[Any]) -> None:
        """Compare-and-set on the revision held; the caller holds the slot's lock."""
        data = _fitting(slot, self._max_record_bytes)
        slot.ours.append(hash(data))  # its echo may come before the answer
        slot.revision = await self._kv.update(slot.key, data, last=slot.revision)
        slot.saved_at = asyncio.get_running_loop().time()
        slot.dirty = False
        slot.marks.clear()  # they are in what was written


async def _all(writes: Iterable[Awaitable[None]]) -> None:
    """Every write to its end (none left running while the records are read again), then
    the conflict if there was one, else the first error."""
    results = await asyncio.gather(*writes, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, KeyWrongLastSequenceError):
            raise error
    if errors:
        raise errors[0]


def _fitting(slot: Slot[Any], limit: int) -> bytes:
    """The record as JSON, small enough for one NATS message: a group of thousands of alerts
    first forgets those that ended; if it is still too big, what it could not keep is lost
    to dedup beyond JetStream's window, which beats refusing the group forever."""
    assert slot.record is not None
    data = slot.record.model_dump_json().encode()
    if len(data) <= limit or not isinstance(slot.record, GroupMemory):
        return data
    group = slot.record
    group.alerts = {aid: m for aid, m in group.alerts.items() if m.ends_at is None}
    data = group.model_dump_json().encode()
    while len(data) > limit:
        keep = len(group.alerts) * limit // len(data) * 9 // 10
        oldest_first = sorted(group.alerts.items(), key=lambda item: item[1].starts_at)
        group.alerts = dict(oldest_first[len(oldest_first) - keep :])
        data = group.model_dump_json().encode()
    log.warning("alert index %s: group record cut to %d alerts to fit in a NATS message",
                slot.key, len(group.alerts))  # fmt: skip
    return data
