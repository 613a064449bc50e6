"""Read-only SQL over the DuckDB read model, for analysts (CLI now, the API later).

Three walls, so one mistake is not enough to write or to reach outside:
1. the statement must be exactly one SELECT (WITH, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN;
2. the database is opened with file and network access off, so read_csv('/etc/...'),
   ATTACH, COPY, INSTALL and friends fail inside DuckDB even if they got past (1);
3. the query runs in a transaction that is always rolled back.

Every refusal names its reason. A table written as a file or URL (`FROM 's3://b/x'`) is refused
as reading a file before it runs: with access off DuckDB would answer "Table with name s3://b/x
does not exist!", which reads like a typo.
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
import orjson
from pydantic import BaseModel

from eventlog.schema import READ_MODEL_TABLES

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
# A table name DuckDB would read as a file (a replacement scan) or that names one anyway: a
# scheme (s3://, https://, file://), a path separator, a glob, or a data file's extension.
FILE_LIKE = re.compile(
    r"://|[/\\*?\[]|^~"
    r"|\.(csv|tsv|tbl|txt|json|jsonl|ndjson|parquet|arrow|ipc|feather|avro|orc|xlsx?"
    r"|duckdb|db|sqlite3?|gz|zst|bz2|xz|zip|tar|log)$",
    re.IGNORECASE,
)
# What DuckDB says when a name was looked up as a table, or a file was not opened.
NO_SUCH_TABLE = re.compile(r"^Catalog Error: Table with name (.+?) does not exist!")
NO_FILE_ACCESS = re.compile(r'Cannot access \w+ "(.*)" - ')


class SqlError(ValueError):
    """The query cannot run as written; the message says why."""


class SqlRefused(SqlError):
    """The query is not a read of Vigil's own tables."""


class FilesRefused(SqlRefused):
    """The query reads a file or URL: `name` is what it names."""

    def __init__(self, name: str) -> None:
        tables = ", ".join(READ_MODEL_TABLES)
        super().__init__(
            f"reading files is not allowed: {name!r} is a file or URL, "
            f"not one of Vigil's tables ({tables}, ...)"
        )
        self.name = name


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
    _check_tables(con, EXPLAIN_PREFIX.sub("", sql, count=1))


def _check_tables(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise FilesRefused for the first table reference that is a file or URL, whatever
    DuckDB would say of it. Only what DuckDB can parse into a tree is checked here (a SELECT,
    and DESCRIBE, SHOW, SUMMARIZE, which are SELECTs inside); `_execute` catches the rest
    from DuckDB's own error."""
    cur = con.cursor()  # the caller's connection may be busy with a transaction of its own
    try:
        (tree,) = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone() or ("{}",)
    except duckdb.Error:
        return
    finally:
        cur.close()
    parsed = orjson.loads(tree)
    if parsed.get("error"):
        return
    ctes: set[str] = set()
    tables: list[str] = []
    _walk(parsed, ctes, tables)
    for name in tables:
        if name not in ctes and FILE_LIKE.search(name):
            raise FilesRefused(name)


def _walk(node: Any, ctes: set[str], tables: list[str]) -> None:
    """Collect every base table's name, and every CTE's (a CTE may be named like a file)."""
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
            tables.append(node["table_name"])
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(e["key"] for e in cte_map.get("map", []) if isinstance(e.get("key"), str))
        for value in node.values():
            _walk(value, ctes, tables)
    elif isinstance(node, list):
        for value in node:
            _walk(value, ctes, tables)


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
        # File and network access are off: what it tried to open names the refusal.
        opened = NO_FILE_ACCESS.search(str(exc))
        if opened:
            raise FilesRefused(opened.group(1)) from None
        raise SqlRefused(f"reading files is not allowed: {_message(exc)}") from None
    except duckdb.InterruptException:
        raise SqlError("query was interrupted") from None
    except duckdb.CatalogException as exc:
        # A file name the tree did not show (query_table('s3://...')): looked up as a table.
        missing = NO_SUCH_TABLE.match(str(exc))
        if missing and FILE_LIKE.search(missing.group(1)):
            raise FilesRefused(missing.group(1)) from None
        raise SqlError(_message(exc)) from None
    except duckdb.Error as exc:
        raise SqlError(_message(exc)) from None
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


def _message(exc: BaseException) -> str:
    """DuckDB's message on one line, with its hint (`Did you mean "events"?`, candidate
    columns) but without the quoted query and caret that follow a blank line."""
    text = str(exc).strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
