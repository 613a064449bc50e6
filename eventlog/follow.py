"""Following one stream into the DuckDB file: the consumer, what has arrived, the write in flight.

Batch N+1 is taken and prepared while batch N is written, so reading and writing overlap
instead of adding up. Writes run one at a time, in order, so acks (AckPolicy.ALL) stay in order.
The consumer is a durable push consumer, recreated to start right after the last sequence
handed to a write whenever that is the safe thing to do: at start, when a delivery went
missing, and when the consumer itself disappeared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from nats.nuid import NUID

log = logging.getLogger(__name__)

# An abandoned consumer (its DuckDB file deleted) is removed by the server.
CONSUMER_INACTIVE_THRESHOLD = 24 * 3600.0
RESTART_PAUSE = 0.25  # seconds between tries to restart a consumer during a leader election
NOT_YET = (NatsTimeoutError, NoRespondersError, ServiceUnavailableError)

Write = Callable[[], object]
Prepare = Callable[[str, list[Msg]], Awaitable[Write | None]]
Commit = Callable[[Write | None, Msg], Awaitable[None]]


class StreamFollower:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subject: str,
        after: int,
        batch: int,
        wait: float,
        prepare: Prepare,
        commit: Commit,
        check_every: int = 10,
    ) -> None:
        self.js, self.stream, self.durable, self.subject = js, stream, durable, subject
        self.batch, self.wait, self.prepare, self.commit = batch, wait, prepare, commit
        self.check_every = check_every  # quiet takes between checks that the consumer exists
        self.handed = after  # highest sequence given to a write
        self.delivered = 0  # the consumer's number for the last message taken
        self.arrived = Arrivals(batch)
        self.writing: asyncio.Task[None] | None = None
        self.sub: Subscription | None = None

    async def start(self) -> None:
        await self._subscribe(await self._restart_consumer())

    async def run(self, stop: asyncio.Event) -> None:
        quiet = 0
        try:
            while not stop.is_set():
                if self.writing is not None and self.writing.done():
                    # Raises if the write failed: the projector stops at once, with the cause,
                    # rather than waiting on a consumer whose ack window has filled up.
                    await self._finish_write()
                msgs = await self.arrived.take(self.wait)
                if not msgs:
                    quiet += 1
                    if quiet % self.check_every == 0 and not await self._still_followed(stop):
                        break
                    continue
                quiet = 0
                if consecutive(msgs, self.delivered):
                    await self._hand_over(msgs)
                else:
                    gap = f"delivery {msgs[0].metadata.sequence.consumer} follows {self.delivered}"
                    if not await self._start_over(gap, stop):
                        break
            await self._finish_write()
        finally:
            if self.writing is not None and not self.writing.done():
                self.writing.cancel()
            if self.sub is not None:
                await self.sub.unsubscribe()

    async def _hand_over(self, msgs: list[Msg]) -> None:
        self.delivered = msgs[-1].metadata.sequence.consumer
        # At or below `handed`: applied already (or being applied), delivered again.
        fresh = [m for m in msgs if m.metadata.sequence.stream > self.handed]
        write = await self.prepare(self.stream, fresh) if fresh else None
        if fresh:
            self.handed = fresh[-1].metadata.sequence.stream
        await self._finish_write()  # a failed write ends the loop: nothing after it is applied
        self.writing = asyncio.create_task(self.commit(write, msgs[-1]))

    async def _start_over(self, why: str, stop: asyncio.Event) -> bool:
        """Deliveries went missing (lost with a server that was killed, say; acking past them
        would skip them for good), or the consumer was deleted: start it again right after the
        last message handed to a write. False if told to stop meanwhile."""
        log.warning("%s: %s: restarting at %d", self.durable, why, self.handed + 1)
        await self._finish_write()
        while not stop.is_set():
            try:
                config = await self._restart_consumer()
            except NOT_YET as exc:  # a leader election is under way
                log.info("%s: cannot restart the consumer yet (%r)", self.durable, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_PAUSE)
                continue
            if self.sub is not None:
                await self.sub.unsubscribe()
            self.arrived.clear()  # what came before the restart is dropped
            await self._subscribe(config)
            return True
        return False

    async def _still_followed(self, stop: asyncio.Event) -> bool:
        """After a quiet spell: is the consumer still there? A push consumer that was deleted
        just goes silent (nats-py raises nothing), so it is recreated. False if told to stop."""
        try:
            await self.js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            return await self._start_over("the consumer is gone", stop)
        except NOT_YET:
            pass  # cannot tell now; ask again later
        return True

    async def _restart_consumer(self) -> ConsumerConfig:
        """(Re)create the durable push consumer to start right after `handed`.

        Whatever the consumer remembered (unacked messages of a crashed run, another deliver
        subject) is discarded. Push delivery runs at ~3x the rate of nats-py's pull fetch (no
        task per message), with flow control and an ack window as back-pressure.
        """
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.stream, self.durable)
        config = ConsumerConfig(
            durable_name=self.durable,
            deliver_subject=f"_INBOX.vigil.{NUID().next().decode()}",
            filter_subject=self.subject,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.handed + 1,
            ack_wait=60.0,
            max_ack_pending=self.batch * 3,
            flow_control=True,
            idle_heartbeat=5.0,
            inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
        )
        await self.js.add_consumer(self.stream, config)
        return config

    async def _subscribe(self, config: ConsumerConfig) -> None:
        self.delivered = 0
        self.sub = await self.js.subscribe_bind(
            self.stream, config, self.durable, cb=self.arrived.put, manual_ack=True
        )

    async def _finish_write(self) -> None:
        if self.writing is not None:
            writing, self.writing = self.writing, None
            await writing


def consecutive(msgs: list[Msg], after: int) -> bool:
    """Whether these are the deliveries numbered after+1, after+2, ...: none went missing."""
    return all(m.metadata.sequence.consumer == after + i for i, m in enumerate(msgs, 1))


class Arrivals:
    """Messages as the subscription hands them over, taken a batch at a time (a list and an
    event: a queue would cost two coroutine hops per message)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.msgs: list[Msg] = []
        self.some = asyncio.Event()

    async def put(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self.some.set()

    async def take(self, timeout: float) -> list[Msg]:
        """Up to one batch of what has come; waits up to `timeout` when nothing has."""
        if not self.msgs:
            try:
                await asyncio.wait_for(self.some.wait(), timeout)
            except TimeoutError:
                return []
        taken, self.msgs = self.msgs[: self.batch], self.msgs[self.batch :]
        if not self.msgs:
            self.some.clear()
        return taken

    def clear(self) -> None:
        self.msgs = []
        self.some.clear()
