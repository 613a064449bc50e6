"""One orchestrator at a time per saga: a lease in a JetStream key-value bucket.

Several orchestrators share the work (one durable consumer), and more than one event can
wake the same saga (its proposal, its approval, the pause lifting). Without a lease, a second
orchestrator could find a step started and not finished while the first is still running it,
and ask about it or run it. The holder of a saga's lease is the only one to move it; it renews
the lease every third of its term while it does, and gives it back when the saga waits or
ends. A holder that died loses it when its term runs out (its `expires_at`, by the wall clock
of the one who looks: keep the orchestrators' clocks in step, as NTP does).

Keys: `saga.<saga_id>`, and `service.<hash of its name>` while a saga is started on that
service (the rate limit's check and the start, as one); value: `{"owner": ..., "expires_at":
...}`. Writes name the revision they replace, so two that race cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import AwareDatetime, BaseModel, ValidationError

from eventlog.stream import key_value_bucket

log = logging.getLogger(__name__)
LEASE_BUCKET = "vigil_saga_leases"


class Held(BaseModel):
    owner: str
    expires_at: AwareDatetime


async def lease_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """The bucket, made on first use."""
    return await key_value_bucket(
        js, LEASE_BUCKET, description="Vigil: which orchestrator moves each saga now",
        history=1, replicas=replicas,
    )  # fmt: skip


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Leases:
    """Leases of one orchestrator (`owner`) for `term` seconds each."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        term: float = 6.0,
        owner: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kv, self.term, self.owner, self.clock = kv, term, owner or owner_name(), clock

    def _value(self) -> bytes:
        until = self.clock() + timedelta(seconds=self.term)
        return Held(owner=self.owner, expires_at=until).model_dump_json().encode()

    async def acquire(self, key: str) -> int | None:
        """The lease's revision, or None when another owner holds it and its term is not over."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:  # never held, or given back (a delete marker)
            try:
                return await self.kv.create(key, self._value())
            except KeyWrongLastSequenceError:
                return None  # someone took it between the two calls
        try:
            held = Held.model_validate_json(entry.value or b"")
            free = held.owner == self.owner or held.expires_at <= self.clock()
        except ValidationError:
            free = True  # not a lease: take it over
        if not free:
            return None
        try:
            return await self.kv.update(key, self._value(), last=entry.revision)
        except KeyWrongLastSequenceError:
            return None

    async def renew(self, key: str, revision: int) -> int | None:
        try:
            return await self.kv.update(key, self._value(), last=revision)
        except KeyWrongLastSequenceError:
            return None  # taken over: this owner's term had run out

    async def release(self, key: str, revision: int) -> None:
        with contextlib.suppress(Exception):  # a lease not given back runs out on its own
            await self.kv.delete(key, last=revision)

    @contextlib.asynccontextmanager
    async def holding(self, key: str) -> AsyncIterator[asyncio.Event | None]:
        """While the block runs, the lease `key` is this owner's (renewed meanwhile): yields
        an event set if it is lost after all (this process stalled past its term and another
        took it); None if another owner holds it."""
        revision = await self.acquire(key)
        if revision is None:
            yield None
            return
        current = revision
        lost = asyncio.Event()

        async def renewing() -> None:
            nonlocal current
            while True:
                await asyncio.sleep(self.term / 3)
                try:
                    renewed = await self.renew(key, current)
                except Exception as exc:  # NATS slow or away: try again at the next tick
                    log.warning("%s: could not renew its lease: %r", key, exc)
                    continue
                if renewed is None:
                    log.error("%s: lease lost (this process stalled past its term)", key)
                    lost.set()
                    return
                current = renewed

        task = asyncio.create_task(renewing())
        try:
            yield lost
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if not lost.is_set():
                await self.release(key, current)


def saga_key(saga_id: str) -> str:
    return f"saga.{saga_id}"


def service_key(service: str) -> str:
    """Any service name as a key (a name may hold what a key may not)."""
    return f"service.{hashlib.sha256(service.encode()).hexdigest()[:24]}"
