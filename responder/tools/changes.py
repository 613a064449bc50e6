"""`recent_changes`: deploys, config changes and flags recorded as `ChangeRecorded` events.

Also the example of a tool of one's own: an argument model, an async function of (context,
arguments) returning small JSON-able data, and `Tool(...)` registered in a `ToolRegistry`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eventlog.envelope import subject_for
from eventlog.history import read_events
from eventlog.payloads import ChangeRecorded
from responder.tools import Tool, ToolContext

MAX_CHANGES = 20


class RecentChangesArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(default=None, description="only this service's changes")
    hours: float = Field(default=24.0, gt=0, le=24 * 30, description="how far back")


async def recent_changes(ctx: ToolContext, args: RecentChangesArgs) -> dict[str, Any]:
    """The latest changes before `now` (newest first, at most MAX_CHANGES), and how many."""
    since = ctx.now - timedelta(hours=args.hours)
    found = []
    for stored in await read_events(ctx.js, [subject_for("*", "ChangeRecorded")]):
        change = stored.event.data
        assert isinstance(change, ChangeRecorded)
        if since <= change.changed_at <= ctx.now and args.service in (None, change.service):
            found.append(change)
    found.sort(key=lambda c: c.changed_at, reverse=True)
    return {"changes": [_told(c, ctx) for c in found[:MAX_CHANGES]], "total": len(found)}


def _told(change: ChangeRecorded, ctx: ToolContext) -> dict[str, Any]:
    minutes = (ctx.now - change.changed_at).total_seconds() / 60
    return {
        "service": change.service,
        "kind": change.kind,
        "description": change.description,
        "at": change.changed_at.isoformat(),
        "minutes_before_now": round(minutes, 1),
        "ref": change.ref,
    }


RECENT_CHANGES = Tool(
    name="recent_changes",
    description="Deploys, config changes and feature flags recorded before now, newest first.",
    args=RecentChangesArgs,
    run=recent_changes,
)
