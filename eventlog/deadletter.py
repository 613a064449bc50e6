"""A message a consumer gave up on, kept with the reason in VIGIL_DEAD_LETTERS.

A poison message must neither block the messages behind it nor vanish: the consumer records it
here (its own stream, so a dead letter can never poison the event consumers) and terminates it.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field

from eventlog.stream import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM

log = logging.getLogger(__name__)


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    consumer: str
    stream: str
    stream_seq: int
    subject: str
    reason: str
    deliveries: int = Field(ge=1)
    recorded_at: datetime
    payload_b64: str = Field(description="the message body as it was on the stream")

    def payload(self) -> bytes:
        return base64.b64decode(self.payload_b64)


def dead_letter_for(
    msg: Msg, *, consumer: str, reason: str, at: datetime | None = None
) -> DeadLetter:
    meta = msg.metadata
    return DeadLetter(
        consumer=consumer,
        stream=meta.stream,
        stream_seq=meta.sequence.stream,
        subject=msg.subject,
        reason=reason,
        deliveries=meta.num_delivered,
        recorded_at=at or datetime.now(UTC),
        payload_b64=base64.b64encode(msg.data).decode(),
    )


async def record_dead_letter(js: JetStreamContext, letter: DeadLetter) -> None:
    """Store the dead letter durably (idempotent per consumer and sequence), then log it."""
    await js.publish(
        f"{DEAD_LETTER_PREFIX}.{letter.consumer}",
        orjson.dumps(letter.model_dump(mode="json")),
        stream=DEAD_LETTER_STREAM,
        headers={"Nats-Msg-Id": f"{letter.consumer}:{letter.stream}:{letter.stream_seq}"},
    )
    log.error(
        "dead letter: consumer %s gave up on %s seq %d after %d deliveries: %s",
        letter.consumer,
        letter.subject,
        letter.stream_seq,
        letter.deliveries,
        letter.reason,
    )
