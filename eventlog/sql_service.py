"""SQL over the bus: the process that holds the DuckDB file answers read-only queries.

DuckDB 2.0 lets one process hold a database file (even a read-only open from a second process
fails), so while `vigil up` runs, `vigil sql` asks it over NATS request/reply instead of
opening the file. The subject carries the file's id, so several Vigils on one NATS never answer
for each other. It is a NATS micro service: `nats micro ls` (natscli) shows it with its stats.

The same queries are answered on a second, well-known subject, `vigil.sql.read`
(`request_read_model`): a tool worker runs apart from any data dir (`vigil worker` on another
host) and cannot know the file's id, yet its tools read the read model (`similar_incidents`).
Like every micro endpoint it subscribes in a queue group, so one projector answers each
request. It assumes one Vigil per NATS (or per account): two Vigils sharing one would each
answer some of the other's workers.
"""

from __future__ import annotations

import asyncio

import duckdb
import orjson
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, Field

from eventlog.sql import DEFAULT_MAX_ROWS, QueryResult, SqlError, SqlRefused, query


class SqlUnanswered(SqlError):
    """Nothing answered the request (no service on the subject, or none within the timeout):
    the query was never judged."""


SQL_SUBJECT_PREFIX = "vigil.sql"
SQL_READ_SUBJECT = f"{SQL_SUBJECT_PREFIX}.read"  # a db id is hex: never "read"
NO_VIGIL = "no running Vigil answers for this data dir (is `vigil up` running?)"
NO_READ_MODEL = f"no read model answers on {SQL_READ_SUBJECT} (is a Vigil projector running?)"


class SqlRequest(BaseModel):
    sql: str
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1)


class SqlReply(BaseModel):
    result: QueryResult | None = None
    error: str | None = None
    refused: bool = False


def sql_subject(db_id: str) -> str:
    return f"{SQL_SUBJECT_PREFIX}.{db_id}"


async def serve_sql(
    nc: NATS,
    con: duckdb.DuckDBPyConnection,
    db_id: str,
    *,
    timeout: float = 30.0,
    max_rows: int = DEFAULT_MAX_ROWS,
    parallel: int = 4,
) -> Service:
    """Answer on `vigil.sql.<db_id>` and `vigil.sql.read`; a client may ask for fewer rows than
    `max_rows`, not more.
    Up to `parallel` queries run at once, each on its own cursor, so one slow query does not
    hold up everyone else's."""
    slots = asyncio.Semaphore(parallel)
    running: set[asyncio.Task[None]] = set()

    async def answer(request: Request) -> None:
        async with slots:
            try:
                ask = SqlRequest.model_validate_json(request.data)
                rows = min(ask.max_rows, max_rows)
                reply = SqlReply(result=await query(con, ask.sql, max_rows=rows, timeout=timeout))
            except SqlError as exc:
                reply = SqlReply(error=str(exc), refused=isinstance(exc, SqlRefused))
            except ValueError as exc:
                reply = SqlReply(error=f"bad request: {exc}")
            await request.respond(_fit(reply, nc.max_payload))

    async def handle(request: Request) -> None:
        task = asyncio.create_task(answer(request))
        running.add(task)
        task.add_done_callback(running.discard)

    service = await add_service(
        nc, name="vigil-sql", version="0.1.0", description="read-only SQL on the read model"
    )
    await service.add_endpoint(name="query", subject=sql_subject(db_id), handler=handle)
    await service.add_endpoint(name="read", subject=SQL_READ_SUBJECT, handler=handle)
    await nc.flush()  # the server knows the subscription before anyone is told we are ready
    return service


def _fit(reply: SqlReply, limit: int) -> bytes:
    """The reply as JSON within NATS's max payload: rows are dropped (and the result marked
    truncated) until it fits."""
    body = orjson.dumps(reply.model_dump(mode="json"))
    result = reply.result
    while len(body) > limit and result is not None and len(result.rows) > 1:
        keep = max(1, min(len(result.rows) - 1, int(len(result.rows) * limit * 0.9 / len(body))))
        result = QueryResult(columns=result.columns, rows=result.rows[:keep], truncated=True)
        body = orjson.dumps(SqlReply(result=result).model_dump(mode="json"))
    if len(body) > limit:
        too_big = SqlReply(error=f"one row is larger than the bus allows ({limit} bytes)")
        body = orjson.dumps(too_big.model_dump(mode="json"))
    return body


async def request_read_model(
    nc: NATS, sql: str, *, max_rows: int = DEFAULT_MAX_ROWS, timeout: float = 35.0
) -> QueryResult:
    """Ask whichever projector serves this NATS (see the module's docstring)."""
    return await request_sql(
        nc, SQL_READ_SUBJECT, sql, max_rows=max_rows, timeout=timeout, unanswered=NO_READ_MODEL
    )


async def request_sql(
    nc: NATS,
    subject: str,
    sql: str,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout: float = 35.0,
    unanswered: str = NO_VIGIL,
) -> QueryResult:
    """Ask the running service; raises SqlError (or SqlRefused) with its message, or
    SqlUnanswered (with `unanswered` when nothing serves `subject`)."""
    payload = SqlRequest(sql=sql, max_rows=max_rows).model_dump_json().encode()
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
    except NoRespondersError:
        raise SqlUnanswered(unanswered) from None
    except NatsTimeoutError:
        raise SqlUnanswered(f"the running Vigil did not answer within {timeout:g}s") from None
    try:
        reply = SqlReply.model_validate_json(msg.data)
    except ValueError:
        raise SqlError("the running Vigil sent a reply that is not a query result") from None
    if reply.error is not None:
        raise (SqlRefused if reply.refused else SqlError)(reply.error)
    assert reply.result is not None
    return reply.result
