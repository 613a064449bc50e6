"""The incident list from the read model, over the bus: filters, and keyset pagination.

There is no parameter binding on the SQL bus, so every value reaches the SQL in a form that
cannot break out of it: a status from a fixed set, times and the cursor's key as integers
(microseconds since the epoch), the incident id matched against its pattern, and a service
name as a string literal with its quotes doubled.

The cursor is the last row's (opened_at, incident_id), base64url-encoded: the next page is
everything strictly older in that order, so incidents opened meanwhile (newer, on earlier
pages) neither shift nor repeat what the next page holds.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from nats.aio.client import Client as NATS

from api.models import Incident
from eventlog.envelope import INCIDENT_ID_PATTERN
from eventlog.readmodels import STATUS_RANK
from eventlog.sql_service import request_read_model

STATUSES = tuple(STATUS_RANK)
MAX_LIMIT = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INCIDENT_ID = re.compile(INCIDENT_ID_PATTERN)
COLUMNS = (
    "incident_id", "status", "title", "service", "severity", "opened_at", "acknowledged_at",
    "acknowledged_by", "resolved_at", "resolution", "root_cause", "root_cause_service",
    "root_cause_summary", "root_cause_confidence", "last_event_at", "event_count",
)  # fmt: skip
SELECT = f"SELECT {', '.join(COLUMNS)}, epoch_us(opened_at) AS opened_us FROM incidents"


NOT_A_CURSOR = "cursor: not one this API gave (pass next_cursor as it came)"


class BadQuery(ValueError):
    """A filter or cursor the list cannot take; the message names it and what to send."""


@dataclass(frozen=True)
class Cursor:
    opened_us: int  # microseconds since the epoch
    incident_id: str

    def encode(self) -> str:
        raw = orjson.dumps([self.opened_us, self.incident_id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            opened_us, incident_id = orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise BadQuery(NOT_A_CURSOR) from None
        if type(opened_us) is not int or not isinstance(incident_id, str):
            raise BadQuery(NOT_A_CURSOR)
        if not INCIDENT_ID.fullmatch(incident_id):
            raise BadQuery(NOT_A_CURSOR)
        return cls(opened_us, incident_id)


@dataclass(frozen=True)
class IncidentFilter:
    status: str | None = None
    service: str | None = None
    since: datetime | None = None  # opened at or after (aware)
    until: datetime | None = None  # opened before (aware)

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise BadQuery(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.service is not None and not 1 <= len(self.service) <= 256:
            raise BadQuery("service: give 1 to 256 characters")
        if self.service is not None and any(ord(c) < 32 for c in self.service):
            raise BadQuery("service: control characters are not allowed")
        if self.since and self.until and self.since >= self.until:
            raise BadQuery("since must be before until")

    def where(self, after: Cursor | None) -> str:
        conds = []
        if self.status is not None:
            conds.append(f"status = '{self.status}'")  # one of STATUSES
        if self.service is not None:
            conds.append(f"service = {quote(self.service)}")
        if self.since is not None:
            conds.append(f"epoch_us(opened_at) >= {micros(self.since)}")
        if self.until is not None:
            conds.append(f"epoch_us(opened_at) < {micros(self.until)}")
        if after is not None:
            conds.append(
                f"(epoch_us(opened_at) < {after.opened_us} OR (epoch_us(opened_at) = "
                f"{after.opened_us} AND incident_id < {quote(after.incident_id)}))"
            )
        return f"WHERE {' AND '.join(conds)}" if conds else ""


def quote(text: str) -> str:
    """A SQL string literal: quotes doubled (DuckDB has no backslash escapes)."""
    return "'" + text.replace("'", "''") + "'"


def micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


async def list_incidents(
    nc: NATS, filters: IncidentFilter, *, limit: int, cursor: Cursor | None, timeout: float
) -> tuple[list[Incident], Cursor | None]:
    """Newest `opened_at` first (ties by incident id), up to `limit`, and the cursor of the
    next page (None on the last). Raises SqlError when the read model does not answer."""
    sql = (
        f"{SELECT} {filters.where(cursor)} "
        f"ORDER BY opened_at DESC, incident_id DESC LIMIT {limit + 1}"
    )
    result = await request_read_model(nc, sql, max_rows=limit + 1, timeout=timeout)
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    page = rows[:limit]
    incidents = [Incident.model_validate(row) for row in page]
    # A reply cut to fit the bus (or the projector's own row cap) is a short page, not the
    # last one: the next page starts after the last row that came.
    more = len(rows) > limit or result.truncated
    last = page[-1] if page else None
    next_cursor = Cursor(last["opened_us"], last["incident_id"]) if more and last else None
    return incidents, next_cursor


async def get_incident(nc: NATS, incident_id: str, *, timeout: float) -> Incident | None:
    """The incident's read-model row, None if not projected (yet). `incident_id` must match
    INCIDENT_ID_PATTERN. Raises SqlError when the read model does not answer."""
    assert INCIDENT_ID.fullmatch(incident_id)
    sql = f"{SELECT} WHERE incident_id = {quote(incident_id)}"
    result = await request_read_model(nc, sql, max_rows=1, timeout=timeout)
    if not result.rows:
        return None
    return Incident.model_validate(dict(zip(result.columns, result.rows[0], strict=True)))
