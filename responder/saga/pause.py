"""The global pause of remediation: a switch in a JetStream key-value bucket.

`vigil pause` and `vigil resume` (the API later) write it; every orchestrator reads it before
each step it would begin, so a pause stops new steps at once while a step already running
finishes. The bucket keeps the last 64 settings, each with who set it, when and why: an audit
trail of the switch. The policy file's `paused: true` pauses too, whatever the switch says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import AwareDatetime, BaseModel, ValidationError

from eventlog.stream import key_value_bucket

log = logging.getLogger(__name__)
CONTROL_BUCKET = "vigil_control"
PAUSE_KEY = "remediation.paused"


class PauseSwitch(BaseModel):
    """The switch as last set."""

    paused: bool
    by: str
    at: AwareDatetime
    reason: str = ""


async def control_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """The bucket, made on first use."""
    return await key_value_bucket(
        js, CONTROL_BUCKET, description="Vigil: operators' switches (the pause of remediation)",
        history=64, replicas=replicas,
    )  # fmt: skip


async def set_pause(kv: KeyValue, paused: bool, *, by: str, reason: str = "") -> PauseSwitch:
    switch = PauseSwitch(paused=paused, by=by, at=datetime.now(UTC), reason=reason)
    await kv.put(PAUSE_KEY, switch.model_dump_json().encode())
    return switch


async def read_pause(kv: KeyValue) -> PauseSwitch | None:
    """The switch, or None if never set. A value that is not a switch reads as paused: when
    in doubt, nothing new runs."""
    try:
        entry = await kv.get(PAUSE_KEY)
    except KeyNotFoundError:
        return None
    try:
        return PauseSwitch.model_validate_json(entry.value or b"")
    except ValidationError:
        log.error("the pause switch holds %r, not a switch: paused", entry.value)
        return PauseSwitch(paused=True, by="?", at=datetime.now(UTC), reason="unreadable")


async def on_resume(kv: KeyValue, resumed: Callable[[], Awaitable[None]]) -> None:
    """Call `resumed` each time the switch goes from paused to not, until cancelled."""
    watcher = await kv.watch(PAUSE_KEY)
    was_paused = False
    try:
        async for entry in watcher:
            if entry is None:  # the end of what was there: updates follow
                continue
            try:
                paused = PauseSwitch.model_validate_json(entry.value or b"").paused
            except ValidationError:
                paused = True
            if was_paused and not paused:
                await resumed()
            was_paused = paused
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(watcher.stop())
