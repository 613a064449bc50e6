"""The DuckDB file the projector owns: each batch, its read-model rows and the checkpoint
are written in one transaction, so a crash at any point neither loses nor doubles a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from eventlog.deadletter import DeadLetter
from eventlog.envelope import Event, MalformedEvent, parse_event
from eventlog.investigations import (
    INVESTIGATION_EVENTS,
    TOOL_EVENTS,
    InvestigationRow,
    ToolCallRow,
    fold_investigation,
    fold_tool_call,
)
from eventlog.readmodels import IncidentRow, fold_incident
from eventlog.rowtable import Key, Row, RowTable
from eventlog.sagas import (
    SAGA_EVENTS,
    SAGA_STEP_EVENTS,
    SagaRow,
    SagaStepRow,
    fold_saga,
    fold_saga_step,
)
from eventlog.schema import create_schema, database_id

log = logging.getLogger(__name__)

ENVELOPE_SHAPE = (
    '{"id": "UUID", "type": "VARCHAR", "incident_id": "VARCHAR", "occurred_at": "TIMESTAMPTZ",'
    ' "source": "VARCHAR", "causation_id": "UUID", "correlation_id": "UUID",'
    ' "schema_version": "INTEGER", "data": "JSON"}'
)
# from_json parses each envelope once (->> per field would parse it ten times).
INSERT_EVENTS = f"""
INSERT OR IGNORE INTO events
SELECT seq, e.id, e.type, e.incident_id, e.occurred_at, e.source, e.causation_id,
       e.correlation_id, e.schema_version, e.data
FROM (SELECT seq, from_json(raw, '{ENVELOPE_SHAPE}') AS e FROM staged_events)
RETURNING seq
"""

ENVELOPE_FIELDS = ("id", "type", "incident_id", "occurred_at", "source", "causation_id",
                   "correlation_id", "schema_version", "data")  # fmt: skip
STORED_EVENTS = f"""
SELECT seq, {", ".join(ENVELOPE_FIELDS)} FROM events
WHERE type IN (SELECT unnest(?::VARCHAR[])) ORDER BY seq
"""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stream message as the projector applies it; `dead` is set when it is unreadable."""

    seq: int
    raw: bytes
    event: Event | None
    dead: DeadLetter | None = None


def open_database(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open with file and network access off: queries can read only Vigil's own tables."""
    con = _connect(path, read_only=read_only)
    if not read_only:
        create_schema(con)
    return con


def _connect(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    config = {"enable_external_access": False}
    return duckdb.connect(str(path), read_only=read_only, config=config)


class ProjectionStore:
    """Writes batches into one DuckDB file; the only writer of that file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.incidents = RowTable("incidents", IncidentRow, ("incident_id",))
        self.tool_calls = RowTable("tool_calls", ToolCallRow, ("incident_id", "tool_call_id"))
        self.sagas = RowTable("sagas", SagaRow, ("saga_id",))
        self.saga_steps = RowTable("saga_steps", SagaStepRow, ("saga_id", "step"))
        self.investigations = RowTable(
            "investigations", InvestigationRow, ("incident_id", "attempt")
        )
        self.tables = (
            self.incidents, self.investigations, self.tool_calls, self.sagas, self.saga_steps
        )  # fmt: skip
        self.con = _connect(path, read_only=False)
        self._create_schema()
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
                        # As it came: parse_event is strict on the wire, so these bytes mean
                        # to DuckDB what they meant to pydantic (re-serializing cost 25%).
                        "raw": pa.array([m.raw.decode() for m in good], pa.string()),
                    }
                )
                cur.register("staged_events", staged)
                inserted = {s for (s,) in cur.execute(INSERT_EVENTS).fetchall()}
                cur.unregister("staged_events")
            new = [m.event for m in batch if m.seq in inserted and m.event is not None]
            seqs = [m.seq for m in batch if m.seq in inserted]
            self._fold(cur, new, seqs)
            _insert_dead_letters(cur, [m.dead for m in batch if m.dead is not None])
            self._checkpoint(cur, stream, batch[-1].seq)
            cur.commit()
        except BaseException:
            cur.rollback()
            for table in self.tables:
                table.rolled_back()
            raise
        finally:
            cur.close()
        for table in self.tables:
            table.committed()
        self._last_seq[stream] = batch[-1].seq
        return len(inserted)

    def apply_dead_letters(self, stream: str, letters: Sequence[DeadLetter], last: int) -> None:
        """Store the dead letters of a batch whose last stream sequence is `last`."""
        cur = self.con.cursor()
        try:
            cur.begin()
            _insert_dead_letters(cur, letters)
            self._checkpoint(cur, stream, last)
            cur.commit()
            self._last_seq[stream] = last
        except BaseException:
            cur.rollback()
            raise
        finally:
            cur.close()

    def _create_schema(self) -> None:
        """What the file lacks, in one transaction with the rows a new table is owed, so a
        crash cannot leave a new table made but never filled."""
        self.con.begin()
        try:
            created = create_schema(self.con)
            if "sagas" in created and "events" not in created:
                self._fold_sagas_told_before()
            self.con.commit()
        except BaseException:
            self.con.rollback()
            self.sagas.rolled_back()
            raise
        self.sagas.committed()

    def _fold_sagas_told_before(self) -> None:
        """A file made before the `sagas` table holds the saga events it was told then: fold
        them now, so past remediations are there without a replay (only `sagas` is new; the
        other tables were folded as the events came)."""
        types = [t.__name__ for t in SAGA_EVENTS]
        stored = self.con.execute(STORED_EVENTS, [types]).fetchall()
        events = []
        for seq, *values in stored:
            envelope = dict(zip(ENVELOPE_FIELDS, values, strict=True))
            try:
                events.append(parse_event({**envelope, "data": orjson.loads(envelope["data"])}))
            except MalformedEvent as exc:  # as a replay would, it leaves out what it cannot read
                log.error("stored event at seq %d not folded into sagas: %s", seq, exc.reason)
        sagas = _group(events, SAGA_EVENTS, lambda e: (e.data.saga_id,))
        _fold_rows(self.con, self.sagas, sagas, fold_saga)

    def _checkpoint(self, cur: duckdb.DuckDBPyConnection, stream: str, seq: int) -> None:
        cur.execute("INSERT OR REPLACE INTO projector_checkpoints VALUES (?, ?)", [stream, seq])

    def _fold(
        self, cur: duckdb.DuckDBPyConnection, events: Sequence[Event], seqs: Sequence[int]
    ) -> None:
        if not events:
            return
        by_incident: dict[Key, list[tuple[Event, int]]] = {}
        for event, seq in zip(events, seqs, strict=True):
            by_incident.setdefault((event.incident_id,), []).append((event, seq))
        incidents = self.incidents.load(cur, by_incident)
        stored = dict(incidents)
        for key, items in by_incident.items():
            after = fold_incident(incidents.get(key), items)
            if after is not None:
                incidents[key] = after
        self.incidents.save(cur, incidents, stored)

        attempts = _group(events, INVESTIGATION_EVENTS, lambda e: (e.incident_id, e.data.attempt))
        _fold_rows(cur, self.investigations, attempts, fold_investigation)
        tools = _group(events, TOOL_EVENTS, lambda e: (e.incident_id, e.data.tool_call_id))
        _fold_rows(cur, self.tool_calls, tools, fold_tool_call)
        sagas = _group(events, SAGA_EVENTS, lambda e: (e.data.saga_id,))
        _fold_rows(cur, self.sagas, sagas, fold_saga)
        steps = _group(events, SAGA_STEP_EVENTS, lambda e: (e.data.saga_id, e.data.step))
        _fold_rows(cur, self.saga_steps, steps, fold_saga_step)


def _fold_rows(
    cur: duckdb.DuckDBPyConnection,
    table: RowTable[Row],
    groups: dict[Key, list[Event]],
    fold: Callable[[Row | None, Sequence[Event]], Row],
) -> None:
    """Fold each group of events into its row of `table` (one row per key)."""
    rows = table.load(cur, groups)
    stored = dict(rows)
    for key, evs in groups.items():
        rows[key] = fold(rows.get(key), evs)
    table.save(cur, rows, stored)


def _group(
    events: Sequence[Event], types: tuple[type, ...], key: Callable[[Any], tuple[Any, ...]]
) -> dict[tuple[Any, ...], list[Event]]:
    groups: dict[tuple[Any, ...], list[Event]] = {}
    for event in events:
        if isinstance(event.data, types):
            groups.setdefault(key(event), []).append(event)
    return groups


def _insert_dead_letters(cur: duckdb.DuckDBPyConnection, letters: Sequence[DeadLetter]) -> None:
    if letters:
        cur.executemany(
            "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (d.stream, d.stream_seq, d.consumer, d.subject, d.reason, d.deliveries,
                 d.recorded_at, d.payload_b64)
                for d in letters
            ],
        )  # fmt: skip
