"""The webhook receiver: Alertmanager's POST in, events durably in JetStream, then the answer.

Alertmanager retries a notification until it gets a 2xx, so the receiver answers 2xx only
after JetStream acknowledged every event of the request and the alert index recorded them,
and 503 when it could not: the retry then stores what was missing, and the derived event ids
make the rest duplicates (JetStream's within its window, the alert index's beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from nats.errors import Error as NatsError
from pydantic import BaseModel, ValidationError

from alertmanager.alert_index import AlertIndex
from alertmanager.correlation import correlate, service_of
from alertmanager.payload import WebhookPayload
from eventlog.publisher import EventPublisher, PublishError

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_WINDOW = timedelta(minutes=15)


class Refused(Exception):
    """The request is not taken; `status` is the HTTP answer and the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Accepted(BaseModel):
    alerts: int
    stored: int
    duplicates: int


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


async def read_bounded(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never read whole)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise Refused(
                413, f"payload larger than {limit} bytes: lower max_alerts in alertmanager.yml"
            )
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
) -> Accepted:
    """Validate, correlate, store the new events, remember them; Refused(503) when NATS
    did not take all of it within `timeout` (per step)."""
    payload = parse_payload(body)
    services = {s for a in payload.alerts if (s := service_of(a))}
    try:
        async with asyncio.timeout(timeout):
            group, service_slots = await index.load(payload.group_key, services)
    except (NatsError, TimeoutError) as exc:
        raise _unavailable(payload, "alert index not readable", exc) from None
    # No await from here to the publish: a concurrent request for the same group or service
    # plans after this one and sees its assignments.
    assert group.record is not None
    known = {name: slot.record for name, slot in service_slots.items() if slot.record}
    before = dict(known)  # correlate updates `known` in place
    plan = correlate(payload, group.record, known, window)
    changed = [group] if plan.events else []
    for name, memory in plan.services.items():
        if memory is not before.get(name):  # correlate replaces a service record it moves on
            service_slots[name].record = memory
            changed.append(service_slots[name])
    for slot in changed:
        slot.changed()
    acks = []
    if plan.events:
        try:
            acks = await publisher.publish_many(plan.events)
        except PublishError as exc:
            # Remember the events that did get stored: a retry after JetStream's window
            # must not store them again.
            plan.mark_stored(acked=exc.acked.keys())
            with contextlib.suppress(NatsError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await index.save(group, *service_slots.values())
            raise _unavailable(payload, "events not stored", exc) from None
    plan.mark_stored()
    try:
        async with asyncio.timeout(timeout):
            await index.save(group, *service_slots.values())
    except (NatsError, TimeoutError) as exc:
        # The events are stored, and the record stays due: the retry finds them stored
        # (JetStream's duplicates within its window) and writes the record then.
        raise _unavailable(payload, "alert index not written", exc) from None
    late = sum(1 for a in acks if a.duplicate)  # JetStream knew them: a concurrent copy
    return Accepted(
        alerts=len(payload.alerts),
        stored=len(plan.events) - late,
        duplicates=plan.duplicates + late,
    )


def _unavailable(payload: WebhookPayload, what: str, exc: BaseException) -> Refused:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    log.warning("webhook from %s: %s (%s); answering 503 so Alertmanager retries",
                payload.receiver, what, reason)  # fmt: skip
    return Refused(503, f"{what} ({reason}); retry")
