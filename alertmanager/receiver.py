"""The webhook receiver: Alertmanager's POST in, events durably in JetStream, then the answer.

Alertmanager retries a notification until it gets a 2xx, so the receiver answers 2xx only
after JetStream acknowledged every event of the request and the alert index recorded them,
and 503 when it could not: the retry then stores what was missing, and the derived event ids
make the rest duplicates (JetStream's within its window, the alert index's beyond it).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from nats.errors import Error as NatsError
from pydantic import BaseModel, ValidationError

from alertmanager.alert_events import EVENT_BUDGET
from alertmanager.alert_index import AlertIndex, Conflict, Held, Slot
from alertmanager.correlation import Plan, correlate, service_of
from alertmanager.memory import GroupMemory, ServiceMemory
from alertmanager.payload import WebhookPayload
from eventlog.publisher import EventPublisher, PublishError

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_WINDOW = timedelta(minutes=15)
DEFAULT_READ_TIMEOUT = 30.0
CONFLICT_RETRIES = 5


class Refused(Exception):
    """The request is not taken; `status` is the HTTP answer and the message says why."""

    def __init__(self, status: int, message: str, accepted: Accepted | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.accepted = accepted  # what was taken all the same (alerts refused one by one)


class Accepted(BaseModel):
    """The answer to a notification: `stored` events (its alerts' firings and resolutions,
    and the withdrawals of alerts no longer listed), `duplicates` (alerts stored before, or
    listed twice), `stale` (older than what is known: a firing copy of a resolved alert, a
    resolution of nothing Vigil saw fire)."""

    alerts: int
    stored: int
    duplicates: int
    stale: int = 0


def check_token(authorization: str | None, token: str | None) -> None:
    """Bearer token, as Alertmanager's http_config.authorization sends it; compared in
    constant time. No token configured means no one gets in, not everyone."""
    if not token:
        raise Refused(
            401, "the webhook token is not configured on this Vigil (VIGIL_WEBHOOK_TOKEN)"
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Refused(401, "missing or wrong bearer token")


async def read_bounded(
    chunks: AsyncIterator[bytes], limit: int, timeout: float = DEFAULT_READ_TIMEOUT
) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never read whole), and with
    408 when it has not all arrived within `timeout` seconds (a client that stalls)."""
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in chunks:
                body += chunk
                if len(body) > limit:
                    raise Refused(
                        413,
                        f"payload larger than {limit} bytes: lower max_alerts in alertmanager.yml",
                    )
    except TimeoutError:
        raise Refused(
            408, f"the body did not arrive within {timeout:g}s ({len(body)} bytes came)"
        ) from None
    return bytes(body)


def parse_payload(body: bytes) -> WebhookPayload:
    try:
        return WebhookPayload.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise Refused(422, f"{where}: {first['msg']}{more}") from None


async def receive(
    body: bytes,
    publisher: EventPublisher,
    index: AlertIndex,
    *,
    window: timedelta = DEFAULT_WINDOW,
    timeout: float = 5.0,
    budget: int = EVENT_BUDGET,
) -> Accepted:
    """Validate, correlate, write the decision, store the new events, remember them.

    Refused(503) when NATS did not take all of it within `timeout` (per step); Refused(422)
    naming the alerts too large to store even cut, after the rest of the group was stored.
    """
    payload = parse_payload(body)
    services = {s for a in payload.alerts if (s := service_of(a))}
    plan, held = await _decide(payload, services, index, window, timeout, budget)
    try:
        held.release_services()  # the group stays locked until its events are stored
        await _store(payload, plan, held.group, publisher)
    finally:
        held.release()
        index.flush_later(held.group)
    late = plan.late  # JetStream knew them: a concurrent copy
    accepted = Accepted(
        alerts=len(payload.alerts),
        stored=len(plan.events) - late,
        duplicates=plan.duplicates + late,
        stale=plan.stale,
    )
    if plan.refused:  # 4xx: Alertmanager does not retry what can never be stored
        raise Refused(422, _refusal(payload, plan), accepted)
    return accepted


async def _decide(
    payload: WebhookPayload,
    services: set[str],
    index: AlertIndex,
    window: timedelta,
    timeout: float,
    budget: int,
) -> tuple[Plan, Held]:
    """Lock the records, correlate on them and write the decision before anything is
    published; when another replica wrote first, decide again on what it wrote. Returns the
    plan and the records, the group still locked (Refused(503) when NATS is not there)."""
    now = datetime.now(UTC)
    # Service records written by a decision that did not stand: (revision, record before).
    retake: dict[str, tuple[int, ServiceMemory | None]] = {}
    for _ in range(CONFLICT_RETRIES):
        try:
            async with asyncio.timeout(timeout):
                held = await index.hold(payload.group_key, services)
        except (NatsError, TimeoutError) as exc:
            raise _unavailable(payload, "alert index not readable", exc) from None
        try:
            forced = _take_back(held, retake)
            before = {name: slot.record for name, slot in held.services.items()}
            plan, changed = _plan(payload, held, window, now, budget)
            changed += [slot for slot in forced if slot not in changed]
            held.release_services(keep=changed)  # a service decided on, not changed: free
            if plan.group_changed or changed:
                async with asyncio.timeout(timeout):
                    await index.commit(held, changed, group=True)
            return plan, held
        except Conflict as conflict:
            held.release()
            for name, slot in held.services.items():
                if slot in conflict.written:
                    retake[name] = (conflict.written[slot], before[name])
        except (NatsError, TimeoutError) as exc:
            held.release()
            raise _unavailable(payload, "alert index not written", exc) from None
        except BaseException:
            held.forget_decision()  # half made in memory: never to be written
            held.release()
            raise
    raise _unavailable(payload, "alert index", Conflict())


def _take_back(
    held: Held, retake: dict[str, tuple[int, ServiceMemory | None]]
) -> list[Slot[ServiceMemory]]:
    """Service records this request wrote in a decision that did not stand, still as written:
    back to what they were before it, to be written again whatever is decided now."""
    forced = []
    for name, (revision, before) in retake.items():
        slot = held.services[name]
        if slot.revision == revision:
            slot.record = before
            forced.append(slot)
    return forced


def _plan(
    payload: WebhookPayload, held: Held, window: timedelta, now: datetime, budget: int
) -> tuple[Plan, list[Slot[ServiceMemory]]]:
    """`correlate` on the held records; the service records it moved on are put in their
    slots and returned."""
    assert held.group.record is not None
    known = {name: slot.record for name, slot in held.services.items() if slot.record}
    before = dict(known)  # correlate replaces a service record it moves on
    plan = correlate(payload, held.group.record, known, window, now=now, budget=budget)
    changed = []
    for name, memory in known.items():
        if memory is not before.get(name):
            held.services[name].record = memory
            changed.append(held.services[name])
    return plan, changed


async def _store(
    payload: WebhookPayload, plan: Plan, group: Slot[GroupMemory], publisher: EventPublisher
) -> None:
    """Publish the plan's events; mark in the group what JetStream acknowledged."""
    assert group.record is not None
    try:
        acks = await publisher.publish_many(plan.events) if plan.events else []
    except PublishError as exc:
        # Remember the events that did get stored: a retry after JetStream's window must not
        # store them again.
        group.marks.update(plan.mark_stored(group.record, acked=exc.acked.keys()))
        group.dirty = True
        raise _unavailable(payload, "events not stored", exc) from None
    group.marks.update(plan.mark_stored(group.record))
    group.dirty = group.dirty or bool(plan.marks)
    plan.late = sum(1 for a in acks if a.duplicate)


def _refusal(payload: WebhookPayload, plan: Plan) -> str:
    """One line: which alerts were refused and why, and that the others were stored."""
    named = "; ".join(
        f"alerts.{r.position} (fingerprint {r.fingerprint}): {r.reason}" for r in plan.refused[:3]
    )
    more = f" (+{len(plan.refused) - 3} more)" if len(plan.refused) > 3 else ""
    rest = len(payload.alerts) - len(plan.refused)
    return f"{named}{more}; the other {rest} alerts were taken"


def _unavailable(payload: WebhookPayload, what: str, exc: BaseException) -> Refused:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    log.warning("webhook from %s: %s (%s); answering 503 so Alertmanager retries",
                payload.receiver, what, reason)  # fmt: skip
    return Refused(503, f"{what} ({reason}); retry")
