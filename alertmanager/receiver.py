"""The webhook receiver: Alertmanager's POST in, events durably in JetStream, then the answer.

Alertmanager retries a notification until it gets a 2xx, so the receiver answers 2xx only
after JetStream acknowledged every event of the request, and 503 when it could not: the retry
then stores what was missing, and the derived event ids make the rest duplicates.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel, ValidationError

from alertmanager.alert_events import alert_events
from alertmanager.payload import WebhookPayload
from eventlog.publisher import EventPublisher, PublishError

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


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


async def receive(body: bytes, publisher: EventPublisher) -> Accepted:
    """Validate, turn into events, store them all; Refused(503) if JetStream did not ack."""
    payload = parse_payload(body)
    events = alert_events(payload)
    try:
        acks = await publisher.publish_many(events)
    except PublishError as exc:
        log.warning("webhook from %s: %s; answering 503 so Alertmanager retries",
                    payload.receiver, exc)  # fmt: skip
        raise Refused(503, f"events not stored ({exc}); retry") from None
    duplicates = sum(1 for a in acks if a.duplicate)
    return Accepted(alerts=len(events), stored=len(events) - duplicates, duplicates=duplicates)
