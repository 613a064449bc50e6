"""Group and service memories (see `correlation`) kept in JetStream KV, so dedup and
correlation hold across restarts, across Vigil replicas, and beyond the stream's duplicate
window (Alertmanager re-sends a firing group every `repeat_interval`, 4h by default).

Each record is read once and then served from memory: requests for one group share one
object, so planning (synchronous) sees every earlier request's assignments. Writes are
compare-and-set on the KV revision; when another replica wrote first, the records merge.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from alertmanager.correlation import GroupMemory, ServiceMemory, memory_key, merge_groups

log = logging.getLogger(__name__)
ALERTS_BUCKET = "VIGIL_ALERTS"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600.0
CONFLICT_RETRIES = 5
MAX_RECORD_BYTES = 900_000  # under NATS's default max_payload (1 MB) with headers to spare
R = TypeVar("R", GroupMemory, ServiceMemory)


@dataclass
class Slot(Generic[R]):
    """One record as this process knows it: the value, the KV revision it was read or
    written at, and how many changes it had then and has now (unchanged: not written)."""

    key: str
    record: R | None
    revision: int
    changes: int = 0
    saved_changes: int = 0
    saved_at: float = -math.inf  # loop time of our last write: never, for a record read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What KV holds as far as we know (read or written by us): a write of other bytes seen
    # on the bucket's subjects is another replica's, and makes this copy stale.
    known_bytes: bytes = b""
    writing: bytes = b""
    stale: bool = False

    def changed(self) -> None:
        self.changes += 1

    def due(self, refresh_after: float) -> bool:
        """Changed since written, or written so long ago that KV's max age nears (a record
        in use is rewritten, so a Watchdog alert firing for months is still known)."""
        stale = asyncio.get_running_loop().time() - self.saved_at > refresh_after
        return self.record is not None and (self.changes != self.saved_changes or stale)


class AlertIndex:
    def __init__(
        self, kv: KeyValue, *, ttl: float = DEFAULT_TTL_SECONDS, cache_size: int = 100_000
    ) -> None:
        self._kv = kv
        self._refresh_after = ttl / 2
        self._cache_size = cache_size
        self._slots: OrderedDict[str, Slot] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Slot]] = {}
        self._keys: set[str] | None = None  # every key in the bucket, when following it
        # Set each time another replica wrote a record this process holds (cleared by waiters).
        self.overwritten = asyncio.Event()
        self._subject_prefix = f"$KV.{kv._name}."  # nats-py keeps it private

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        replicas: int = 1,
        ttl: float = DEFAULT_TTL_SECONDS,
        follow: NATS | None = None,
    ) -> AlertIndex:
        """The bucket, created if missing (an existing one keeps its operator's settings)."""
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
        index = cls(kv, ttl=ttl)
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
        if slot is not None and (removed or msg.data not in (slot.known_bytes, slot.writing)):
            slot.stale = True  # read again at its next use
            self.overwritten.set()

    async def load(
        self, group_key: str, services: set[str]
    ) -> tuple[Slot[GroupMemory], dict[str, Slot[ServiceMemory]]]:
        names = sorted(services)
        keys = [memory_key("g", group_key), *(memory_key("s", s) for s in names)]
        cached = [self._slots.get(k) for k in keys]
        if all(slot is not None and not slot.stale for slot in cached):  # the usual case
            for key in keys:
                self._slots.move_to_end(key)
            slots = cached
        else:
            slots = await asyncio.gather(
                self._slot(keys[0], GroupMemory),
                *(self._slot(k, ServiceMemory) for k in keys[1:]),
            )
        return slots[0], dict(zip(names, slots[1:], strict=True))  # type: ignore[arg-type]

    async def save(self, *slots: Slot) -> None:
        """Write each changed record; raises what NATS raised when one could not be (it
        stays changed, so the next save writes it)."""
        changed = [s for s in slots if s.due(self._refresh_after)]
        if len(changed) == 1:
            await self._save(changed[0])
        elif changed:
            await asyncio.gather(*(self._save(slot) for slot in changed))

    async def _slot(self, key: str, kind: type[R]) -> Slot[R]:
        slot = self._slots.get(key)
        if slot is not None and not slot.stale:
            self._slots.move_to_end(key)
            return slot
        loading = self._loading.get(key)
        if loading is None:  # the first asker reads; concurrent askers share its answer
            loading = asyncio.ensure_future(self._read(key, kind))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        slot = await asyncio.shield(loading)
        self._slots[key] = slot
        while len(self._slots) > self._cache_size:
            self._slots.popitem(last=False)
        return slot

    async def _read(self, key: str, kind: type[R]) -> Slot[R]:
        if self._keys is not None and key not in self._keys:
            record, revision, raw = None, 0, b""  # new: no round trip to learn that
        else:
            record, revision, raw = await self._get(key, kind)
        if record is None and kind is GroupMemory:
            record = GroupMemory()  # type: ignore[assignment]  # a group always has one
        return Slot(key, record, revision, known_bytes=raw)

    async def _get(self, key: str, kind: type[R]) -> tuple[R | None, int, bytes]:
        """The record and its revision; none (at the revision a write must name) when the
        key is missing, deleted, expired, or holds what this version cannot read."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as exc:
            # A deleted key has a tombstone: its revision is what the next write must name.
            entry = getattr(exc, "entry", None)
            return None, (entry.revision or 0) if entry is not None else 0, b""
        raw = entry.value or b""
        try:
            return kind.model_validate_json(raw), entry.revision or 0, raw
        except ValidationError as exc:
            log.error("alert index %s: unreadable record, starting it afresh: %s", key, exc)
            return None, entry.revision or 0, raw

    async def _save(self, slot: Slot) -> None:
        async with slot.lock:  # one write per record at a time: revisions follow each other
            for _ in range(CONFLICT_RETRIES):
                changes = slot.changes
                if not slot.due(self._refresh_after):
                    return
                data = _fitting(slot)
                slot.writing = data  # its echo on the bucket's subject is ours, not a replica's
                try:
                    slot.revision = await self._kv.update(slot.key, data, last=slot.revision)
                    slot.saved_changes = changes  # later changes wait for the lock: written next
                    slot.saved_at = asyncio.get_running_loop().time()
                    slot.known_bytes = data
                    return
                except KeyWrongLastSequenceError:
                    await self._merge_theirs(slot)
            raise KeyWrongLastSequenceError(description="record changed under every retry")

    async def _merge_theirs(self, slot: Slot) -> None:
        """Another replica wrote this record (or it expired): fold theirs into ours, then
        write on top of their revision."""
        assert slot.record is not None
        theirs, slot.revision, slot.known_bytes = await self._get(slot.key, type(slot.record))
        if theirs is None:
            return  # gone from KV: ours is all there is
        merged = _merge(slot.record, theirs)
        for name in type(merged).model_fields:  # in place: requests hold this object
            setattr(slot.record, name, getattr(merged, name))
        log.info("alert index %s: merged a concurrent write", slot.key)


def _fitting(slot: Slot) -> bytes:
    """The record as JSON, small enough for one NATS message: a group of thousands of alerts
    first forgets those that ended; if it is still too big, what it could not keep is lost
    to dedup beyond JetStream's window, which beats refusing the group forever."""
    assert slot.record is not None
    data = slot.record.model_dump_json().encode()
    if len(data) <= MAX_RECORD_BYTES or not isinstance(slot.record, GroupMemory):
        return data
    group = slot.record
    group.alerts = {aid: m for aid, m in group.alerts.items() if m.ends_at is None}
    data = group.model_dump_json().encode()
    while len(data) > MAX_RECORD_BYTES:
        keep = len(group.alerts) * MAX_RECORD_BYTES // len(data) * 9 // 10
        oldest_first = sorted(group.alerts.items(), key=lambda item: item[1].starts_at)
        group.alerts = dict(oldest_first[len(oldest_first) - keep :])
        data = group.model_dump_json().encode()
    log.warning("alert index %s: group record cut to %d alerts to fit in a NATS message",
                slot.key, len(group.alerts))  # fmt: skip
    return data


def _merge(ours: BaseModel, theirs: BaseModel) -> BaseModel:
    if isinstance(ours, GroupMemory) and isinstance(theirs, GroupMemory):
        return merge_groups(ours, theirs)
    assert isinstance(ours, ServiceMemory) and isinstance(theirs, ServiceMemory)
    return max(ours, theirs, key=lambda m: (m.last_fired_at, m.incident_id))
