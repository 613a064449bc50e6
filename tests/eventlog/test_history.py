"""Reading back what the stream holds: one incident's events, in order, as of now."""

from __future__ import annotations

from nats.js import JetStreamContext

from eventlog.history import incident_events
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from tests.eventlog.samples import steps


async def test_an_incidents_events_are_read_back_in_order(js: JetStreamContext) -> None:
    mine, other = steps(4, "inc-x"), steps(3, "inc-y")
    published = [mine[0], other[0], *mine[1:], *other[1:]]
    acks = await EventPublisher(js).publish_many(published)
    read = await incident_events(js, "inc-x")
    assert [s.event.id for s in read] == [e.id for e in mine]
    by_id = {
        e.id: a.seq for e, a in zip([mine[0], other[0], *mine[1:], *other[1:]], acks, strict=True)
    }
    assert [s.seq for s in read] == [by_id[e.id] for e in mine]
    assert await incident_events(js, "inc-none") == []
    assert (await js.stream_info(EVENTS_STREAM)).state.consumer_count == 0  # nothing left
