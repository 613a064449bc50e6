"""One read-model table as the projector sees it: load rows by key, save them, remember them.

The projector is the only writer of its DuckDB file, so the rows it committed are known
without asking DuckDB again: a bounded cache holds them, filled only after a commit and
emptied on a rollback. DuckDB stays the truth; the cache only spares re-reading it.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import duckdb
import pyarrow as pa

Row = TypeVar("Row")
Key = tuple[Any, ...]


class RowTable(Generic[Row]):
    def __init__(
        self, table: str, row_type: type[Row], key_cols: tuple[str, ...], *, cached: int = 50_000
    ) -> None:
        self.table = table
        self.row_type = row_type
        self.key_cols = key_cols
        self.cols = [f.name for f in dataclasses.fields(row_type)]  # type: ignore[arg-type]
        self._values = operator.attrgetter(*self.cols)  # row -> tuple of its column values
        self._cached = cached
        self._cache: OrderedDict[Key, Row] = OrderedDict()
        self._staged: dict[Key, Row] = {}
        self._name = f"staged_{table}"

    def key(self, row: Row) -> Key:
        return tuple(getattr(row, c) for c in self.key_cols)

    def load(self, cur: duckdb.DuckDBPyConnection, keys: Iterable[Key]) -> dict[Key, Row]:
        """The stored rows for these keys; keys with no row are absent from the result."""
        found: dict[Key, Row] = {}
        missing: list[Key] = []
        for k in keys:
            row = self._cache.get(k)
            if row is None:
                missing.append(k)
            else:
                found[k] = row
        if missing:
            found.update(self._select(cur, missing))
        return found

    def save(
        self, cur: duckdb.DuckDBPyConnection, rows: dict[Key, Row], stored: dict[Key, Row]
    ) -> None:
        """Insert the new rows and update the stored ones (`stored`: as they were loaded);
        both join the cache on commit."""
        self._insert(cur, [r for k, r in rows.items() if k not in stored])
        changed = [(r, stored[k]) for k, r in rows.items() if k in stored and r != stored[k]]
        self._update(cur, changed)
        self._staged.update(rows)

    def committed(self) -> None:
        for k, row in self._staged.items():
            self._cache[k] = row
            self._cache.move_to_end(k)
        self._staged.clear()
        while len(self._cache) > self._cached:
            self._cache.popitem(last=False)

    def rolled_back(self) -> None:
        self._staged.clear()

    def _select(self, cur: duckdb.DuckDBPyConnection, keys: list[Key]) -> dict[Key, Row]:
        staged = pa.table({c: [k[i] for k in keys] for i, c in enumerate(self.key_cols)})
        cur.register("staged_keys", staged)
        select = ", ".join(f"t.{c}" for c in self.cols)
        joined = ", ".join(self.key_cols)
        rows = cur.execute(
            f"SELECT {select} FROM {self.table} t JOIN staged_keys USING ({joined})"
        ).fetchall()
        cur.unregister("staged_keys")
        out: dict[Key, Row] = {}
        for values in rows:
            record = dict(zip(self.cols, values, strict=True))
            for name, value in record.items():
                if isinstance(value, list):
                    record[name] = tuple(value)  # rows are frozen: lists come back as tuples
            row = self.row_type(**record)
            out[self.key(row)] = row
        return out

    def _insert(self, cur: duckdb.DuckDBPyConnection, rows: list[Row]) -> None:
        if rows:
            self._register(cur, rows, self.cols)
            names = ", ".join(self.cols)
            cur.execute(f"INSERT INTO {self.table} ({names}) SELECT {names} FROM {self._name}")
            cur.unregister(self._name)

    def _update(self, cur: duckdb.DuckDBPyConnection, changed: list[tuple[Row, Row]]) -> None:
        """Set only the columns that changed in some row (`changed`: new and stored): DuckDB's
        UPDATE costs by the columns it sets, and a batch mostly moves a row's counts and times."""
        if not changed:
            return
        moved = set(self.key_cols)
        for new, old in changed:
            pairs = zip(self.cols, self._values(new), self._values(old), strict=True)
            moved.update(c for c, a, b in pairs if a != b)
        cols = [c for c in self.cols if c in moved]
        self._register(cur, [new for new, _ in changed], cols)
        sets = ", ".join(f"{c} = s.{c}" for c in cols if c not in self.key_cols)
        match = " AND ".join(f"{self.table}.{c} = s.{c}" for c in self.key_cols)
        cur.execute(f"UPDATE {self.table} SET {sets} FROM {self._name} s WHERE {match}")
        cur.unregister(self._name)

    def _register(self, cur: duckdb.DuckDBPyConnection, rows: list[Row], cols: list[str]) -> None:
        """Stage the values of `cols` in `rows` as an Arrow table DuckDB reads by name."""
        values = dict(zip(self.cols, zip(*map(self._values, rows), strict=True), strict=True))
        cur.register(self._name, pa.table({c: list(values[c]) for c in cols}))
