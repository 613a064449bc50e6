"""Reading the stream back as it is, for assertions: every message, in order."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventlog.envelope import Event, parse_event
from eventlog.stream import EVENTS_STREAM


async def stream_events(js: JetStreamContext, name: str = "test-reader") -> list[Event]:
    """All events in VIGIL_EVENTS, through a throwaway consumer."""
    info = await js.stream_info(EVENTS_STREAM)
    total = info.state.messages
    await js.add_consumer(
        EVENTS_STREAM,
        ConsumerConfig(
            durable_name=name, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL
        ),
    )
    sub = await js.pull_subscribe_bind(name, stream=EVENTS_STREAM)
    out: list[Event] = []
    while len(out) < total:
        for msg in await sub.fetch(min(1000, total - len(out)), timeout=5):
            out.append(parse_event(msg.data))
    await sub.unsubscribe()
    await js.delete_consumer(EVENTS_STREAM, name)
    return out
