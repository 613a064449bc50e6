"""`vigil replay`: rebuild a DuckDB file from the stream, from sequence 1.

The new file is built beside the old one and swapped in only when complete, so a failed
replay leaves the old file as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from nats.js import JetStreamContext
from pydantic import BaseModel

from eventlog.projector import Projector
from eventlog.store import ProjectionStore
from eventlog.stream import DEAD_LETTER_STREAM, EVENTS_STREAM


class ReplayReport(BaseModel):
    path: Path
    events: int
    dead_letters: int
    last_seq: int


async def replay(js: JetStreamContext, target: Path, *, batch: int = 2000) -> ReplayReport:
    """Project the whole stream into a fresh file and move it to `target`."""
    building = target.with_name(target.name + ".replay")
    _remove(building)
    targets = {}
    for stream in (EVENTS_STREAM, DEAD_LETTER_STREAM):
        state = (await js.stream_info(stream)).state
        # An emptied (purged) stream has a last sequence but nothing left to deliver.
        targets[stream] = state.last_seq if state.messages else 0
    store = ProjectionStore(building)
    try:
        projector = Projector(js, store, batch=batch)
        await projector.catch_up(targets)
        (events,) = store.con.execute("SELECT count(*) FROM events").fetchone() or (0,)
        (dead,) = store.con.execute("SELECT count(*) FROM dead_letters").fetchone() or (0,)
        store.con.execute("CHECKPOINT")
    finally:
        store.close()
    _swap_in(building, target)
    return ReplayReport(
        path=target, events=events, dead_letters=dead, last_seq=targets[EVENTS_STREAM]
    )


def _swap_in(building: Path, target: Path) -> None:
    """The new file was checkpointed, so it has no WAL; the old file's WAL must go with it."""
    Path(f"{target}.wal").unlink(missing_ok=True)
    os.replace(building, target)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.wal").unlink(missing_ok=True)
