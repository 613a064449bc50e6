"""The DuckDB file the projector owns: each batch, its read-model rows and the checkpoint
are written in one transaction, so a crash at any point neither loses nor doubles a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from eventlog.deadletter import DeadLetter
from eventlog.envelope import Event
from eventlog.readmodels import (
    SAGA_STEP_EVENTS,
    TOOL_EVENTS,
    IncidentRow,
    SagaStepRow,
    ToolCallRow,
    Touched,
    apply_incident,
    apply_saga_step,
    apply_tool_call,
)
from eventlog.schema import create_schema, database_id

INSERT_EVENTS = """
INSERT OR IGNORE INTO events
SELECT seq, (raw->>'id')::UUID, raw->>'type', raw->>'incident_id',
       (raw->>'occurred_at')::TIMESTAMPTZ, raw->>'source', (raw->>'causation_id')::UUID,
       (raw->>'correlation_id')::UUID, (raw->>'schema_version')::INTEGER, raw->'data'
FROM (SELECT seq, raw::JSON AS raw FROM staged_events)
RETURNING seq
"""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stream message as the projector applies it: `event` is None for a dead letter."""

    seq: int
    raw: bytes
    event: Event | None


def open_database(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open with file and network access off: queries can read only Vigil's own tables."""
    config = {"enable_external_access": False}
    if read_only:
        return duckdb.connect(str(path), read_only=True, config=config)
    con = duckdb.connect(str(path), config=config)
    create_schema(con)
    return con


class ProjectionStore:
    """Writes batches into one DuckDB file; the only writer of that file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.con = open_database(path)
        self.db_id = database_id(self.con)
        # Mirrors projector_checkpoints, updated only after a commit: cheap to read from any task.
        self._last_seq = dict(
            self.con.execute("SELECT stream, last_seq FROM projector_checkpoints").fetchall()
        )

    def close(self) -> None:
        self.con.close()

    def last_seq(self, stream: str) -> int:
        return int(self._last_seq.get(stream, 0))

    def apply_events(self, stream: str, batch: Sequence[StoredMessage]) -> int:
        """Insert a batch of events and fold them into the read models; returns rows added."""
        cur = self.con.cursor()
        try:
            cur.begin()
            good = [m for m in batch if m.event is not None]
            inserted: set[int] = set()
            if good:
                staged = pa.table(
                    {
                        "seq": pa.array([m.seq for m in good], pa.int64()),
                        "raw": pa.array([m.raw.decode() for m in good], pa.string()),
                    }
                )
                cur.register("staged_events", staged)
                inserted = {s for (s,) in cur.execute(INSERT_EVENTS).fetchall()}
                cur.unregister("staged_events")
            new = [m.event for m in batch if m.seq in inserted and m.event is not None]
            seqs = [m.seq for m in batch if m.seq in inserted]
            self._fold(cur, new, seqs)
            self._checkpoint(cur, stream, batch[-1].seq)
            cur.commit()
            self._last_seq[stream] = batch[-1].seq
            return len(inserted)
        except BaseException:
            cur.rollback()
            raise
        finally:
            cur.close()

    def apply_dead_letters(self, stream: str, batch: Sequence[tuple[int, DeadLetter]]) -> None:
        cur = self.con.cursor()
        try:
            cur.begin()
            cur.executemany(
                "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(seq, *_dead_letter_values(d)) for seq, d in batch],
            )
            self._checkpoint(cur, stream, batch[-1][0])
            cur.commit()
            self._last_seq[stream] = batch[-1][0]
        except BaseException:
            cur.rollback()
            raise
        finally:
            cur.close()

    def _checkpoint(self, cur: duckdb.DuckDBPyConnection, stream: str, seq: int) -> None:
        cur.execute("INSERT OR REPLACE INTO projector_checkpoints VALUES (?, ?)", [stream, seq])

    def _fold(
        self, cur: duckdb.DuckDBPyConnection, events: Sequence[Event], seqs: Sequence[int]
    ) -> None:
        if not events:
            return
        touched = Touched()
        incident_ids = {e.incident_id for e in events}
        touched.incidents = {
            r.incident_id: r
            for r in _load(cur, "incidents", IncidentRow, "incident_id", incident_ids)
        }
        tool_events = [e for e in events if isinstance(e.data, TOOL_EVENTS)]
        saga_events = [e for e in events if isinstance(e.data, SAGA_STEP_EVENTS)]
        if tool_events:
            touched.tool_calls = {
                (r.incident_id, r.tool_call_id): r
                for r in _load(cur, "tool_calls", ToolCallRow, "incident_id", incident_ids)
            }
        if saga_events:
            sagas = {e.data.saga_id for e in saga_events}  # type: ignore[attr-defined]
            touched.saga_steps = {
                (r.saga_id, r.step): r
                for r in _load(cur, "saga_steps", SagaStepRow, "saga_id", sagas)
            }
        for event, seq in zip(events, seqs, strict=True):
            inc = touched.incidents.get(event.incident_id)
            touched.incidents[event.incident_id] = apply_incident(inc, event, seq)
        for event in tool_events:
            key = (event.incident_id, event.data.tool_call_id)  # type: ignore[attr-defined]
            touched.tool_calls[key] = apply_tool_call(touched.tool_calls.get(key), event)
        for event in saga_events:
            skey = (event.data.saga_id, event.data.step)  # type: ignore[attr-defined]
            touched.saga_steps[skey] = apply_saga_step(touched.saga_steps.get(skey), event)
        _upsert(cur, "incidents", IncidentRow, touched.incidents.values())
        _upsert(cur, "tool_calls", ToolCallRow, touched.tool_calls.values())
        _upsert(cur, "saga_steps", SagaStepRow, touched.saga_steps.values())


def _dead_letter_values(d: DeadLetter) -> tuple[Any, ...]:
    return (d.consumer, d.stream, d.stream_seq, d.subject, d.reason, d.deliveries,
            d.recorded_at, d.payload_b64)  # fmt: skip


def _columns(row_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(row_type)]


def _load(
    cur: duckdb.DuckDBPyConnection, table: str, row_type: type, key: str, keys: Iterable[Any]
) -> list[Any]:
    cols = _columns(row_type)
    rows = cur.execute(
        f"SELECT {', '.join(cols)} FROM {table} WHERE {key} IN (SELECT unnest(?))",
        [list(keys)],
    ).fetchall()
    out = []
    for values in rows:
        record = dict(zip(cols, values, strict=True))
        if "firing" in record:
            record["firing"] = tuple(record["firing"])
        out.append(row_type(**record))
    return out


def _upsert(
    cur: duckdb.DuckDBPyConnection, table: str, row_type: type, rows: Iterable[Any]
) -> None:
    rows = list(rows)
    if not rows:
        return
    cols = _columns(row_type)
    staged = pa.table({c: [getattr(r, c) for r in rows] for c in cols})
    name = f"staged_{table}"
    cur.register(name, staged)
    names = ", ".join(cols)
    cur.execute(f"INSERT OR REPLACE INTO {table} ({names}) SELECT {names} FROM {name}")
    cur.unregister(name)
