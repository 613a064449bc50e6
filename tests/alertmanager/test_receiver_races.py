"""The receiver on a real JetStream KV bucket, with two replicas' requests interleaved at the
worst moments: one incident per service, and a read model that follows Alertmanager."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from alertmanager.alert_events import alert_id, alert_key, incident_id_for
from alertmanager.alert_index import ALERTS_BUCKET, AlertIndex
from alertmanager.receiver import Refused, receive
from eventlog.envelope import Event
from eventlog.publisher import EventPublisher
from eventlog.readmodels import fold_incident
from tests.eventlog.stream_reading import stream_events

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def am(fp: str, at: timedelta = timedelta(0), *, service: str = "api", name: str = "Down",
       resolved_at: timedelta | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "status": "firing" if resolved_at is None else "resolved",
        "labels": {"alertname": name, "service": service},
        "startsAt": (T0 + at).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z" if resolved_at is None else (T0 + resolved_at).isoformat(),
        "fingerprint": fp,
    }


def notification(group: str, *alerts: dict[str, Any]) -> bytes:
    return orjson.dumps({"version": "4", "receiver": "vigil", "status": "firing",
                         "groupKey": group, "alerts": list(alerts)})  # fmt: skip


def incidents_by(events: list[Event], what: str) -> dict[str, set[str]]:
    """Incidents per service (`what`="service") or per fingerprint, from the firings."""
    found: dict[str, set[str]] = {}
    for e in events:
        if e.type == "AnomalyDetected":
            found.setdefault(getattr(e.data, what), set()).add(e.incident_id)
    return found


def firing(events: list[Event]) -> set[str]:
    """Fingerprints the read model shows firing (each event id once, as the projector)."""
    by_incident: dict[str, list[tuple[Event, int]]] = {}
    seen: set[object] = set()
    for seq, e in enumerate(events, 1):
        if e.id not in seen:
            seen.add(e.id)
            by_incident.setdefault(e.incident_id, []).append((e, seq))
    rows = [fold_incident(None, evs) for evs in by_incident.values()]
    return {fp for row in rows if row is not None for fp in row.firing}


class Interleaved:
    """A replica's bucket handle that runs `meanwhile` (the other replica's request) just
    before its first write of a record whose key starts with `prefix` ("g." a group, "s." a
    service), and can be made slow to read."""

    def __init__(
        self, kv: KeyValue, meanwhile: Callable[[], Awaitable[object]], prefix: str = "g."
    ) -> None:
        self._kv, self._name, self._prefix = kv, kv._name, prefix
        self.meanwhile: Callable[[], Awaitable[object]] | None = meanwhile
        self.slow_reads = False

    async def get(self, key: str) -> Any:
        if self.slow_reads:
            await asyncio.sleep(5)  # a read the caller's timeout gives up on
        return await self._kv.get(key)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if key.startswith(self._prefix) and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await self._kv.update(key, value, last=last)

    async def keys(self) -> list[str]:
        return await self._kv.keys()


async def bucket(js: JetStreamContext) -> KeyValue:
    await AlertIndex.open(js)
    return await js.key_value(ALERTS_BUCKET)


async def test_a_service_record_written_by_a_decision_that_lost_is_taken_back(
    js: JetStreamContext,
) -> None:
    """A writes its service record, then finds the group written by B: A decides again and
    joins B's incident. The service record A wrote must not keep A's first, unused incident,
    or the service's next group joins that one (a split)."""
    y_at, x_at = timedelta(0), timedelta(minutes=1)
    fx, fy = next(  # fingerprints whose tie-break would keep A's first decision
        (f"x{i}", f"y{i}")
        for i in range(100)
        if incident_id_for(alert_id(alert_key(f"y{i}", T0)))
        < incident_id_for(alert_id(alert_key(f"x{i}", T0 + x_at)))
    )
    kv = await bucket(js)
    publisher, b = EventPublisher(js), AlertIndex(kv)

    async def b_first() -> None:  # B: the same group, an alert of service cart
        await receive(notification("g", am(fy, y_at, service="cart")), publisher, b)

    a = AlertIndex(Interleaved(kv, b_first))  # type: ignore[arg-type]
    resolved_y = am(fy, y_at, service="cart", resolved_at=timedelta(seconds=30))
    await receive(notification("g", resolved_y, am(fx, x_at, service="api")), publisher, a)
    later = am("z", timedelta(minutes=2), service="api", name="Other")
    await receive(notification("g2", later), publisher, b)
    assert {s: len(i) for s, i in incidents_by(await stream_events(js), "service").items()} == {
        "cart": 1,
        "api": 1,
    }


async def test_a_decision_never_written_is_not_decided_on_again(js: JetStreamContext) -> None:
    """A's conflict is noticed, but reading the records again times out (503): its decision,
    made in memory, must not be what the retry starts from."""
    kv = await bucket(js)
    publisher, b = EventPublisher(js), AlertIndex(kv)
    handle: Interleaved

    async def b_first() -> None:
        await receive(notification("g2", am("y", timedelta(minutes=1))), publisher, b)
        handle.slow_reads = True

    handle = Interleaved(kv, b_first, prefix="s.")
    a = AlertIndex(handle)  # type: ignore[arg-type]
    with pytest.raises(Refused) as refused:
        await receive(notification("g1", am("x")), publisher, a, timeout=0.5)
    assert refused.value.status == 503
    handle.slow_reads = False
    await receive(notification("g1", am("x")), publisher, a)  # Alertmanager's retry
    assert {s: len(i) for s, i in incidents_by(await stream_events(js), "service").items()} == {
        "api": 1
    }


async def test_a_withdrawal_is_told_when_another_replica_stored_the_firing(
    js: JetStreamContext,
) -> None:
    """B decides on A's record before A wrote which events it stored: x's firing is in the
    stream all the same, so its withdrawal must be told."""
    kv = await bucket(js)
    publisher, a, b = EventPublisher(js), AlertIndex(kv), AlertIndex(kv)
    a.flush_later = lambda slot: None  # type: ignore[method-assign]  # a mark write lost
    await receive(notification("g", am("x"), am("y")), publisher, a)
    for _ in range(2):  # x silenced: gone from the group's notifications
        await receive(notification("g", am("y")), publisher, b)
    assert firing(await stream_events(js)) == {"y"}


async def test_concurrent_replicas_keep_one_incident_per_service_and_alert(
    js: JetStreamContext,
) -> None:
    """Six groups of two services, each notification sent to both replicas at once, in
    waves as the groups fill: one incident per service, every event stored once."""
    kv = await bucket(js)
    publisher, replicas = EventPublisher(js), [AlertIndex(kv), AlertIndex(kv)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for wave in range(3):
        for i in range(wave * 12, (wave + 1) * 12):
            service, name = ("cart", "checkout")[i % 2], ("A", "B", "C")[i % 3]
            groups.setdefault(f"{name}/{service}", []).append(
                am(f"fp{i}", timedelta(seconds=i), service=service, name=name)
            )
        await asyncio.gather(*(
            receive(notification(g, *alerts), publisher, replica)
            for g, alerts in groups.items() for replica in replicas
        ))  # fmt: skip
    events = await stream_events(js)
    assert len(events) == 36 and len({e.id for e in events}) == 36
    assert {s: len(i) for s, i in incidents_by(events, "service").items()} == {
        "cart": 1,
        "checkout": 1,
    }


async def test_timestamps_near_year_one_are_no_500_and_poison_nothing(
    js: JetStreamContext,
) -> None:
    publisher, index = EventPublisher(js), AlertIndex(await bucket(js))
    odd = am("x", resolved_at=timedelta(0)) | {
        "startsAt": "0001-01-01T00:00:01Z",
        "endsAt": "0001-01-01T00:00:02Z",
    }
    await receive(notification("g", odd, am("y")), publisher, index)
    answer = await receive(notification("g", am("y"), am("z")), publisher, index)
    assert answer.stored == 1 and answer.duplicates == 1
