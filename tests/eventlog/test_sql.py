"""Read-only SQL: what analysts may run, what is refused, and the same answers over the bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from nats.aio.client import Client as NATS

from eventlog.sql import SqlError, SqlRefused, query, run_read_only
from eventlog.sql_service import request_sql, serve_sql, sql_subject
from eventlog.store import ProjectionStore, StoredMessage, open_database
from tests.eventlog.samples import steps


@pytest.fixture
def store(db_path: Path) -> Iterator[ProjectionStore]:
    """A DuckDB file holding 30 projected events."""
    s = ProjectionStore(db_path)
    batch = [StoredMessage(i + 1, e.to_json(), e) for i, e in enumerate(steps(30))]
    s.apply_events("VIGIL_EVENTS", batch)
    yield s
    s.close()


SECRET = "/etc/hostname"


@contextlib.asynccontextmanager
async def serving(nc: NATS, store: ProjectionStore, **limits: Any) -> AsyncIterator[str]:
    """The store's SQL service on the bus while the block runs; yields its subject."""
    service = await serve_sql(nc, store.con, store.db_id, **limits)
    try:
        yield sql_subject(store.db_id)
    finally:
        await service.stop()


REFUSED = {
    "insert": "INSERT INTO incidents (incident_id) VALUES ('x')",
    "update": "UPDATE incidents SET status = 'resolved'",
    "delete": "DELETE FROM events",
    "drop": "DROP TABLE events",
    "create": "CREATE TABLE mine AS SELECT 1",
    "attach": "ATTACH '/tmp/other.duckdb' AS other",
    "detach": "DETACH other",
    "copy to": "COPY events TO '/tmp/events.csv'",
    "copy from": "COPY events FROM '/tmp/events.csv'",
    "export": "EXPORT DATABASE '/tmp/dump'",
    "read_csv": f"SELECT * FROM read_csv('{SECRET}')",
    "read_csv_auto": f"SELECT * FROM read_csv_auto('{SECRET}')",
    "read_parquet": "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "read_json": f"SELECT * FROM read_json('{SECRET}')",
    "read_text": f"SELECT * FROM read_text('{SECRET}')",
    "glob": "SELECT * FROM glob('/etc/*')",
    "in a cte": f"WITH x AS (SELECT * FROM read_csv('{SECRET}')) SELECT * FROM x",
    "in a subquery": f"SELECT (SELECT count(*) FROM read_text('{SECRET}'))",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET threads = 1",
    "reset": "RESET threads",
    "pragma": "PRAGMA database_size",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "begin": "BEGIN TRANSACTION",
    "two statements": "SELECT 1; DROP TABLE events",
    "two selects": "SELECT 1; SELECT 2",
    "vacuum": "VACUUM",
    "macro": "CREATE MACRO m(a) AS a",
}


@pytest.mark.parametrize("sql", REFUSED.values(), ids=REFUSED.keys())
def test_refused_with_a_clear_message(store: ProjectionStore, sql: str) -> None:
    with pytest.raises(SqlRefused) as caught:
        run_read_only(store.con, sql)
    message = str(caught.value)
    assert message and "\n" not in message
    assert any(why in message for why in ("refused", "not allowed", "one statement per query"))
    # Nothing changed, and nothing outside was read.
    assert store.con.execute("SELECT count(*) FROM events").fetchone() == (30,)
    assert "mine" not in {t for (t,) in store.con.execute("SHOW TABLES").fetchall()}


def test_a_path_as_a_table_reads_nothing(store: ProjectionStore) -> None:
    with pytest.raises(SqlError) as caught:
        run_read_only(store.con, f"SELECT * FROM '{SECRET}'")
    assert Path(SECRET).read_text().strip() not in str(caught.value)


# A table written as a file or URL: with access off DuckDB says "Table with name ... does not
# exist!" for some (which reads like a typo) and "Permission Error" for others; either way the
# refusal says reading files is not allowed, and names what was named.
FILES = {
    "absolute path": ("SELECT * FROM '/etc/hostname'", "/etc/hostname"),
    "relative file": ("SELECT * FROM 'events.csv'", "events.csv"),
    "quoted name with an extension": (
        'SELECT count(*) FROM "incidents.parquet"',
        "incidents.parquet",
    ),
    "s3 url": ("SELECT * FROM 's3://bucket/x'", "s3://bucket/x"),
    "https url": ("SELECT * FROM 'https://example.com/x.parquet'", "https://example.com/x.parquet"),
    "file url": ("SELECT * FROM 'file:///etc/hostname'", "file:///etc/hostname"),
    "glob": ("SELECT * FROM '/var/log/*'", "/var/log/*"),
    "relative glob": ("SELECT * FROM 'logs/*.json'", "logs/*.json"),
    "read_csv()": (f"SELECT * FROM read_csv('{SECRET}')", SECRET),
    "glob()": ("SELECT * FROM glob('/etc/*')", "/etc/*"),
    "query_table()": ("SELECT * FROM query_table('s3://bucket/x')", "s3://bucket/x"),
    "joined to a table": ("SELECT * FROM events JOIN 'x.csv' USING (id)", "x.csv"),
    "in a subquery": ("SELECT (SELECT count(*) FROM 's3://b/k')", "s3://b/k"),
    "in a union": ("SELECT id FROM events UNION ALL SELECT id FROM 'https://h/x'", "https://h/x"),
    "describe": ("DESCRIBE 's3://bucket/x'", "s3://bucket/x"),
    "summarize": ("SUMMARIZE 'data.csv'", "data.csv"),
    "explain": ("EXPLAIN SELECT * FROM 's3://bucket/x'", "s3://bucket/x"),
}


@pytest.mark.parametrize(("sql", "name"), FILES.values(), ids=FILES.keys())
async def test_reading_a_file_is_refused_as_such(
    store: ProjectionStore, sql: str, name: str
) -> None:
    expected = (
        f"reading files is not allowed: {name!r} is a file or URL, not one of Vigil's tables "
        "(events, incidents, investigations, tool_calls, sagas, saga_steps, dead_letters, ...)"
    )
    with pytest.raises(SqlRefused) as caught:
        run_read_only(store.con, sql)
    assert str(caught.value) == expected
    with pytest.raises(SqlRefused) as caught:  # the runner `vigil sql` and the bus use
        await query(store.con, sql, timeout=5)
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM read_text('{SECRET}')",
        "SELECT * FROM read_parquet('x')",
        f"SELECT * FROM read_json_auto('{SECRET}')",
        "SELECT * FROM sniff_csv('x.csv')",
    ],
)
def test_file_functions_say_reading_files_is_not_allowed(store: ProjectionStore, sql: str) -> None:
    with pytest.raises(SqlRefused, match=r"^reading files is not allowed: '"):
        run_read_only(store.con, sql)


def test_an_unknown_table_keeps_duckdbs_message_and_its_hint(store: ProjectionStore) -> None:
    with pytest.raises(SqlError) as caught:
        run_read_only(store.con, "SELECT * FROM evnts")
    assert not isinstance(caught.value, SqlRefused)
    assert str(caught.value) == (
        'Catalog Error: Table with name evnts does not exist! Did you mean "events"?'
    )


def test_a_cte_named_like_a_file_is_not_a_file(store: ProjectionStore) -> None:
    sql = 'WITH "week.csv" AS (SELECT count(*) AS n FROM events) SELECT n FROM "week.csv"'
    assert run_read_only(store.con, sql).rows == [[30]]


def test_python_variables_are_not_tables(store: ProjectionStore) -> None:
    secret_frame = duckdb.sql("SELECT 'leak' AS x")  # noqa: F841 - would be a replacement scan
    with pytest.raises(SqlError, match="does not exist"):
        run_read_only(store.con, "SELECT * FROM secret_frame")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM events",
        "WITH t AS (SELECT type FROM events) SELECT count(*) FROM t",
        "DESCRIBE events",
        "SHOW TABLES",
        "SUMMARIZE events",
        "EXPLAIN SELECT * FROM incidents",
        "FROM incidents",
        "SELECT * FROM mttr_by_service",
        "SELECT * FROM noisiest_alerts",
    ],
)
def test_reads_run(store: ProjectionStore, sql: str) -> None:
    result = run_read_only(store.con, sql)
    assert result.columns


def test_values_come_back_plain(store: ProjectionStore) -> None:
    result = run_read_only(
        store.con,
        "SELECT id, occurred_at, data, seq FROM events ORDER BY seq LIMIT 1",
    )
    (row,) = result.records()
    assert isinstance(row["id"], str) and len(row["id"]) == 36
    assert row["occurred_at"].startswith("2026-11-24T12:00:00")
    assert row["seq"] == 1


def test_rows_are_capped(store: ProjectionStore) -> None:
    result = run_read_only(store.con, "SELECT seq FROM events ORDER BY seq", max_rows=7)
    assert result.truncated
    assert [r[0] for r in result.rows] == list(range(1, 8))
    assert not run_read_only(store.con, "SELECT 1", max_rows=7).truncated


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("", "empty query"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM nope", "nope does not exist"),
    ],
)
def test_mistakes_are_named(store: ProjectionStore, sql: str, message: str) -> None:
    with pytest.raises(SqlError, match=message):
        run_read_only(store.con, sql)


async def test_a_runaway_query_is_stopped(store: ProjectionStore) -> None:
    with pytest.raises(SqlError, match=r"longer than 0\.5s"):
        await query(store.con, "SELECT count(*) FROM range(1000000000000)", timeout=0.5)
    assert (await query(store.con, "SELECT count(*) FROM events")).rows == [[30]]


def test_the_read_only_open_refuses_files_too(store: ProjectionStore, db_path: Path) -> None:
    store.close()
    con = open_database(db_path, read_only=True)
    try:
        with pytest.raises(SqlRefused):
            run_read_only(con, f"SELECT * FROM read_text('{SECRET}')")
        assert run_read_only(con, "SELECT count(*) FROM events").rows == [[30]]
    finally:
        con.close()


async def test_over_the_bus_same_answers_and_refusals(store: ProjectionStore, nc: NATS) -> None:
    async with serving(nc, store, timeout=5) as subject:
        sql = "SELECT type, count(*) AS n FROM events GROUP BY type"
        assert await request_sql(nc, subject, sql) == run_read_only(store.con, sql)
        with pytest.raises(SqlRefused, match="DROP is refused"):
            await request_sql(nc, subject, "DROP TABLE events")
        with pytest.raises(SqlError, match="does not exist"):
            await request_sql(nc, subject, "SELECT * FROM nope")
        with pytest.raises(SqlError, match="no running Vigil"):
            await request_sql(nc, sql_subject("someone-else"), "SELECT 1", timeout=2)


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN ANALYZE DELETE FROM events",
        "EXPLAIN ANALYZE CHECKPOINT",
        "EXPLAIN INSERT INTO incidents (incident_id) VALUES ('x')",
        "explain   analyse UPDATE incidents SET status = 'x'",
    ],
)
def test_explain_of_a_write_is_refused(store: ProjectionStore, sql: str) -> None:
    """EXPLAIN ANALYZE runs what it explains."""
    with pytest.raises(SqlRefused, match="EXPLAIN of"):
        run_read_only(store.con, sql)
    assert store.con.execute("SELECT count(*) FROM events").fetchone() == (30,)


def test_explain_analyze_of_a_read_runs(store: ProjectionStore) -> None:
    result = run_read_only(store.con, "EXPLAIN ANALYZE SELECT count(*) FROM events")
    assert result.rows


async def test_the_service_caps_rows_whatever_is_asked(store: ProjectionStore, nc: NATS) -> None:
    async with serving(nc, store, max_rows=5) as subject:
        result = await request_sql(nc, subject, "SELECT seq FROM events", max_rows=1000)
    assert len(result.rows) == 5 and result.truncated


@pytest.mark.parametrize(
    "sql",
    [
        "WITH d AS (DELETE FROM projector_checkpoints RETURNING *) SELECT * FROM d",
        "WITH u AS (UPDATE incidents SET status = 'x' RETURNING *) SELECT count(*) FROM u",
        "WITH i AS (INSERT INTO projector_meta VALUES ('k', 'v') RETURNING *) SELECT * FROM i",
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM events RETURNING *) SELECT * FROM d",
        "SELECT * FROM checkpoint()",
    ],
)
def test_writes_hidden_in_a_select_are_refused(store: ProjectionStore, sql: str) -> None:
    with pytest.raises(SqlRefused, match="in a query is refused"):
        run_read_only(store.con, sql)


def test_words_in_strings_and_names_are_fine(store: ProjectionStore) -> None:
    sql = "SELECT 'delete me' AS note, type AS update_kind FROM events LIMIT 1"
    assert run_read_only(store.con, sql).rows == [["delete me", "AgentStep"]]


def test_explain_with_options_is_a_clear_error(store: ProjectionStore) -> None:
    with pytest.raises(SqlError, match="EXPLAIN takes no options"):
        run_read_only(store.con, "EXPLAIN (FORMAT json) SELECT 1")


async def test_a_reply_too_big_for_the_bus_is_cut_to_fit(store: ProjectionStore, nc: NATS) -> None:
    async with serving(nc, store) as subject:
        big = await request_sql(nc, subject, "SELECT repeat('x', 100000) FROM range(30)")
        with pytest.raises(SqlError, match="larger than the bus allows"):
            await request_sql(nc, subject, "SELECT repeat('x', 3000000)")
    assert big.truncated and 0 < len(big.rows) < 30
    assert len(orjson.dumps(big.rows)) < nc.max_payload


async def test_a_slow_query_does_not_hold_up_the_others(store: ProjectionStore, nc: NATS) -> None:
    async with serving(nc, store, timeout=20) as subject:
        slow = asyncio.create_task(
            request_sql(nc, subject, "SELECT count(*) FROM range(20000000000)", timeout=30)
        )
        quick = await request_sql(nc, subject, "SELECT count(*) FROM events", timeout=5)
        assert not slow.done()
        slow.cancel()
    assert quick.rows == [[30]]
