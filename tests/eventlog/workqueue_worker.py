"""A separate process sharing one durable consumer; says on `test.handled.<name>` what it did.

python -m tests.eventlog.workqueue_worker NATS_URL WORKER_NAME
"""

from __future__ import annotations

import asyncio
import signal
import sys

from eventlog.consumer import ConsumerSpec, Received, consume
from eventlog.stream import connect


async def main(url: str, name: str) -> None:
    nc = await connect(url, name=name)
    js = nc.jetstream()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def handle(received: Received) -> None:
        event = received.event
        await asyncio.sleep(0.005)  # stands for real work, so both workers get a share
        await nc.publish(f"test.handled.{name}", str(event.id).encode())

    spec = ConsumerSpec(durable="shared-work", filter_subject="vigil.evt.>", concurrency=4)
    task = asyncio.create_task(consume(js, spec, handle, stop=stop))
    await nc.publish(f"test.ready.{name}", b"")
    await task
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
