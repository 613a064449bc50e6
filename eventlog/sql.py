"""Read-only SQL over the DuckDB read model, for analysts (CLI now, the API later).

Three walls, so one mistake is not enough to write or to reach outside:
1. the statement must be exactly one SELECT (WITH, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN;
2. the database is opened with file and network access off, so read_csv('/etc/...'),
   ATTACH, COPY, INSTALL and friends fail inside DuckDB even if they got past (1);
3. the query runs in a transaction that is always rolled back.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import re
import uuid
from typing import Any

import duckdb
from pydantic import BaseModel

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# A read never needs these words outside a string; a WITH clause can hide a DELETE ... RETURNING
# inside a statement DuckDB calls a SELECT, and checkpoint() is a table function that writes.
WRITE_KEYWORDS = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "MERGE", "RETURNING", "COPY", "ATTACH", "DETACH",
        "CHECKPOINT", "EXPORT", "IMPORT", "INSTALL", "LOAD", "PRAGMA", "SET", "RESET",
        "CREATE", "DROP", "ALTER", "TRUNCATE", "VACUUM", "CALL", "USE", "BEGIN", "COMMIT",
        "ROLLBACK",
    }
)  # fmt: skip
WORD = re.compile(r"\w+")
EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?", re.IGNORECASE)
DEFAULT_MAX_ROWS = 10_000


class SqlError(ValueError):
    """The query cannot run as written; the message says why."""


class SqlRefused(SqlError):
    """The query is not a read of Vigil's own tables."""


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but a single read statement, naming what was found."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.ParserException as exc:
        raise SqlError(f"SQL syntax error: {_first_line(exc)}") from None
    if not statements:
        raise SqlError("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise SqlRefused(f"one statement per query, found {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        _check_explained(con, sql)
    elif kind not in ALLOWED:
        raise SqlRefused(
            f"only read statements run: {kind.name} is refused "
            "(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN are allowed)"
        )
    for position, token in duckdb.tokenize(sql):
        if token == duckdb.token_type.keyword:
            word = WORD.match(sql, position)
            if word and word.group().upper() in WRITE_KEYWORDS:
                raise SqlRefused(f"only reads run: {word.group().upper()} in a query is refused")


def _check_explained(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """EXPLAIN ANALYZE runs what it explains, so what is explained must be a read too."""
    inner = EXPLAIN_PREFIX.sub("", sql, count=1)
    try:
        kinds = [s.type for s in con.extract_statements(inner)]
    except duckdb.ParserException:
        raise SqlError(
            "EXPLAIN takes no options here: write EXPLAIN [ANALYZE] SELECT ..."
        ) from None
    if kinds != [duckdb.StatementType.SELECT]:
        found = kinds[0].name if kinds else "nothing"
        raise SqlRefused(f"only read statements run: EXPLAIN of {found} is refused")


def run_read_only(
    con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int = DEFAULT_MAX_ROWS
) -> QueryResult:
    """Run one read statement on its own cursor; at most `max_rows` rows come back."""
    check_read_only(con, sql)
    cur = con.cursor()
    try:
        return _execute(cur, sql, max_rows)
    finally:
        cur.close()


async def query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout: float = 30.0,
) -> QueryResult:
    """Run in a thread; a query past `timeout` is interrupted inside DuckDB."""
    check_read_only(con, sql)
    cur = con.cursor()
    work = asyncio.ensure_future(asyncio.to_thread(_execute, cur, sql, max_rows))
    try:
        return await asyncio.wait_for(asyncio.shield(work), timeout)
    except TimeoutError:
        cur.interrupt()
        await asyncio.gather(work, return_exceptions=True)
        raise SqlError(f"query took longer than {timeout:g}s and was stopped") from None
    finally:
        if work.done():
            cur.close()


def _execute(cur: duckdb.DuckDBPyConnection, sql: str, max_rows: int) -> QueryResult:
    cur.begin()
    try:
        rel = cur.execute(sql)
        columns = [d[0] for d in rel.description or []]
        rows = rel.fetchmany(max_rows + 1)
    except duckdb.PermissionException as exc:
        raise SqlRefused(f"reading files or the network is refused: {_first_line(exc)}") from None
    except duckdb.InterruptException:
        raise SqlError("query was interrupted") from None
    except duckdb.Error as exc:
        raise SqlError(_first_line(exc)) from None
    finally:
        cur.rollback()  # a read leaves nothing behind, whatever it called
    return QueryResult(
        columns=columns,
        rows=[[_plain(v) for v in row] for row in rows[:max_rows]],
        truncated=len(rows) > max_rows,
    )


def _plain(value: Any) -> Any:
    """JSON-friendly cell values; the same on the direct path and over the bus."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]
