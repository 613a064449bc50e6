"""The one envelope every event travels in, and the discriminated union over all types.

Each payload class gets an envelope subclass whose `type` is a Literal of the class name, so
pydantic picks the payload class from `type` (a real discriminated union): an unknown type or
a payload of the wrong shape is rejected whole with an error naming the field.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)

from eventlog.payloads import PAYLOAD_TYPES, Payload

SCHEMA_VERSION = 1
SUBJECT_PREFIX = "vigil.evt"
# An incident id is one NATS subject token: no dots, wildcards or spaces.
INCIDENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
CANONICAL_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def _canonical_uuid(value: Any) -> Any:
    # pydantic also reads urn:uuid:..., {...} and bare hex; DuckDB (which stores the event as
    # it came) does not read them all, so on the wire only the canonical form is an event id.
    if isinstance(value, str) and not CANONICAL_UUID.match(value):
        raise ValueError("must be a UUID written 8-4-4-4-12")
    return value


EventId = Annotated[uuid.UUID, BeforeValidator(_canonical_uuid)]


class Event(BaseModel):
    """Envelope: ids, time and provenance; the facts are in `data`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: EventId
    type: str
    incident_id: Annotated[str, Field(pattern=INCIDENT_ID_PATTERN)]
    occurred_at: AwareDatetime
    source: Annotated[str, Field(min_length=1)]
    causation_id: EventId | None = None
    correlation_id: EventId | None = None
    schema_version: int = SCHEMA_VERSION
    data: Payload

    @property
    def subject(self) -> str:
        return subject_for(self.incident_id, self.type)

    def to_json(self) -> bytes:
        return EVENT_ADAPTER.dump_json(self)  # type: ignore[arg-type]


def _envelope_for(payload: type[Payload]) -> type[Event]:
    name = payload.__name__
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{name}Event",
        __base__=Event,
        __doc__=f"Envelope of a {name} fact.",
        type=(Literal[name], name),  # type: ignore[valid-type]
        data=(payload, ...),
    )


ENVELOPES: dict[type[Payload], type[Event]] = {p: _envelope_for(p) for p in PAYLOAD_TYPES}
EVENT_TYPES: tuple[str, ...] = tuple(p.__name__ for p in PAYLOAD_TYPES)
AnyEvent = Annotated[Union[tuple(ENVELOPES.values())], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)


class MalformedEvent(ValueError):
    """Bytes on the stream that are not a valid Vigil event; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def subject_for(incident_id: str, event_type: str) -> str:
    return f"{SUBJECT_PREFIX}.{incident_id}.{event_type}"


def new_event(
    data: Payload,
    *,
    incident_id: str,
    source: str,
    caused_by: Event | None = None,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """Wrap a payload in its envelope; `event_id` is passed when the id must be derived."""
    envelope = ENVELOPES.get(type(data))
    if envelope is None:
        raise TypeError(f"{type(data).__name__} is not a registered event payload")
    new_id = event_id or uuid.uuid4()
    return envelope(
        id=new_id,
        incident_id=incident_id,
        occurred_at=occurred_at or datetime.now(UTC),
        source=source,
        causation_id=caused_by.id if caused_by else None,
        correlation_id=(caused_by.correlation_id or caused_by.id) if caused_by else new_id,
        data=data,
    )


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Validate one event from the wire; raises MalformedEvent naming what is wrong."""
    try:
        if isinstance(raw, dict):
            return EVENT_ADAPTER.validate_python(raw)
        # Strict on the wire: a time must be an ISO string, a number a number. The projector
        # stores the bytes as they came, so they must mean to DuckDB what they meant here.
        return EVENT_ADAPTER.validate_json(raw, strict=True)
    except ValidationError as exc:
        raise MalformedEvent(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        if err["type"] == "union_tag_invalid":
            parts.append(f"unknown event type {err['ctx']['tag']!r}")
            continue
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
