"""`vigil tail`: events as they are appended, one line each, until told to stop.

It follows the stream as the API's live streams do (eventlog/live.py: an ordered consumer,
deleted when the tail stops), so what it prints is what the page shows."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC
from typing import Any, TextIO

from eventlog.envelope import Event
from eventlog.history import StoredEvent
from eventlog.live import ALL_EVENTS, EventFollower, incident_subject, last_seq
from eventlog.stream import connect

SUMMARY_WIDTH = 110  # characters of a line's summary of the data
VALUE_WIDTH = 40  # characters of one value in it
BULKY = frozenset({"request", "response", "result", "args", "labels", "annotations", "output"})


def summary(event: Event) -> str:
    """A short `key=value` summary of the event's data: its scalar fields, long text cut, the
    bulky ones (model messages, tool results) left out; a report by its summary and top cause."""
    data: dict[str, Any] = event.data.model_dump(mode="json", exclude_defaults=True)
    parts = []
    report = data.pop("report", None)
    if isinstance(report, dict):
        top = (report.get("hypotheses") or [{}])[0]
        parts.append(f"top={top.get('category')}@{top.get('service')}:{top.get('confidence')}")
        parts.append(f"summary={_cut(str(report.get('summary', '')))}")
    for key, value in data.items():
        if key in BULKY or isinstance(value, dict | list):
            continue
        parts.append(f"{key}={_cut(str(value))}")
    return _cut(" ".join(parts), SUMMARY_WIDTH)


def _cut(text: str, width: int = VALUE_WIDTH) -> str:
    """One line of at most `width`; control characters shown as `\\xNN`, since an alert's
    text must not drive the terminal (an escape sequence could retitle or clear it)."""
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def line(stored: StoredEvent) -> str:
    """`<time UTC> <seq> <incident> <type> <summary>`."""
    event = stored.event
    at = event.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    return f"{at}  {stored.seq:>6}  {event.incident_id}  {event.type}  {summary(event)}".rstrip()


async def tail(
    url: str,
    incident_id: str | None,
    *,
    after: int | None,
    stop: asyncio.Event,
    out: TextIO = sys.stdout,
    note: TextIO = sys.stderr,
) -> None:
    """Print the events of `incident_id` (or of all incidents) after stream sequence `after`
    (None: from now on) until `stop` is set. Says on `note` where it starts once the consumer
    exists, so nothing appended after that line is missed."""
    nc = await connect(url, name="vigil-tail")
    try:
        js = nc.jetstream()
        start = await last_seq(js) if after is None else after
        subject = incident_subject(incident_id) if incident_id else ALL_EVENTS
        async with EventFollower(js, subject, after=start, until=stop) as follower:
            what = f"incident {incident_id}" if incident_id else "all incidents"
            print(f"following {what} after seq {start} (Ctrl-C stops)", file=note, flush=True)
            async for stored in follower:
                print(line(stored), file=out, flush=True)  # a pipe is read line by line
    finally:
        await nc.close()
