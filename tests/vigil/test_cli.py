"""`vigil` as a user runs it: `up`, `sql`, `replay`, `demo` and their errors, as subprocesses."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from vigil_cli_support import (
    VIGIL,
    Done,
    EventWatch,
    StartUp,
    VigilUp,
    proc_info,
    publish,
    run_vigil,
    vigil_env,
    wait_projected,
    watch_events,
)

from eventlog.envelope import Event, new_event, parse_event
from eventlog.payloads import AnomalyDetected, RootCauseConcluded, ToolCompleted, ToolRequested
from eventlog.publisher import EventPublisher
from eventlog.store import ProjectionStore
from eventlog.stream import EVENTS_STREAM, connect
from tests.eventlog.resolved_incident import resolved_incident
from vigil.broker import EmbeddedNats
from vigil.runtime import read_runtime

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
COUNT_EVENTS = "SELECT count(*) AS n FROM events"


def story() -> list[Event]:
    """A resolved incident (every kind of event) and two more alerts, each its own open incident."""
    events = resolved_incident(T0)
    for i in range(2):
        alert = AnomalyDetected(
            origin="alertmanager",
            name=f"DiskFull{i}",
            fingerprint=f"fp{i}",
            starts_at=T0,
            service=f"svc{i}",
            severity="warning",
        )
        events.append(new_event(alert, incident_id=f"disk-{i}", source="alertmanager"))
    return events


def one_line_error(done: Done, *needles: str) -> str:
    """A user error: exit 2, nothing on stdout, one `vigil: ...` line on stderr."""
    assert done.rc == 2, done
    assert done.out == "", done
    assert len(done.err_lines) == 1, done.err
    line = done.err_lines[0]
    assert line.startswith("vigil: "), line
    assert "Traceback" not in done.err
    for needle in needles:
        assert needle in line, line
    return line


def files_exist(*paths: Path) -> bool:
    return any(p.exists() for p in paths)


def db_locked(path: Path) -> bool:
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException as exc:
        assert "lock" in str(exc)
        return True
    return False


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            "incidents": con.execute("SELECT * FROM incidents ORDER BY incident_id").fetchall(),
            "events": con.execute("SELECT * FROM events ORDER BY seq").fetchall(),
            "tool_calls": con.execute(
                "SELECT * FROM tool_calls ORDER BY incident_id, tool_call_id"
            ).fetchall(),
            "saga_steps": con.execute("SELECT * FROM saga_steps ORDER BY saga_id, step").fetchall(),
            "sagas": con.execute("SELECT * FROM sagas ORDER BY saga_id").fetchall(),
            "investigations": con.execute(
                "SELECT * FROM investigations ORDER BY incident_id, attempt"
            ).fetchall(),
        }
    finally:
        con.close()


async def up_with_story(vigil_up: StartUp, data_dir: Path, **settings: str) -> Settled:
    """`vigil up` running, with `story()` appended, its two open incidents investigated by the
    responder (then nothing more is appended), and everything projected."""
    up = await vigil_up(data_dir, **settings)
    runtime = await up.up()
    nc = await connect(runtime.nats_url, name="vigil-test-watch")
    try:
        watch = await watch_events(nc)
        told = story()
        await publish(runtime.nats_url, told)
        await watch.until(lambda events: {"disk-0", "disk-1"} <= _concluded(events), "2 reports")
        seq = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    finally:
        await nc.close()
    await wait_projected(runtime, seq)
    return Settled(up, seq, told)


def _concluded(events: list[Event]) -> set[str]:
    return {e.incident_id for e in events if e.type == "RootCauseConcluded"}


@dataclass(frozen=True)
class Settled:
    up: VigilUp
    events: int  # in the stream, the story's and the responder's
    story: list[Event]


# -- 1. queries while `vigil up` holds the file --------------------------------------------


async def test_up_prints_where_it_is_and_sql_goes_through_it(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    # a long path: each line must stay one line though rich thinks a pipe is 80 columns wide
    data = tmp_path / "a-data-dir-whose-name-is-long-enough-to-pass-eighty-columns"
    settled = await up_with_story(vigil_up, data)
    up = settled.up
    nats_line, db_line, http_line, api_line, model_line, ready = up.lines[:6]
    assert nats_line.startswith("NATS   nats://127.0.0.1:"), up.lines
    assert "embedded" in nats_line and str(data / "nats") in nats_line
    assert db_line == f"DuckDB {data / 'vigil.duckdb'}"
    assert re.fullmatch(r"HTTP   http://127\.0\.0\.1:\d+/webhooks/alertmanager", http_line)
    port = http_line.rsplit(":", 1)[1].split("/")[0]
    assert api_line.startswith(f"API    http://127.0.0.1:{port}/api/v1 (the page at /")
    assert model_line == "Model  builtin (investigations)"
    assert ready == "vigil is up"
    assert any("VIGIL_WEBHOOK_TOKEN is not set" in line for line in up.stderr)
    assert any("VIGIL_API_TOKENS is not set" in line for line in up.stderr)
    # The file is held by `vigil up`: a second process cannot open it, so `vigil sql` must
    # be answered by the running service over NATS.
    assert db_locked(data / "vigil.duckdb")
    env = vigil_env(data)
    events = settled.story

    done = await run_vigil("sql", COUNT_EVENTS, "--format", "json", env=env)
    assert done.rc == 0, done
    assert json.loads(done.out) == [{"n": settled.events}]

    done = await run_vigil(
        "sql",
        # the story's, not what the responder and the workers added (the workers also ran
        # the resolved incident's recorded tool requests, as they run any request appended)
        "SELECT type, count(*) AS n FROM events WHERE id::VARCHAR IN "
        f"({', '.join(repr(str(e.id)) for e in events)}) GROUP BY type ORDER BY type",
        "--format",
        "csv",
        env=env,
    )
    assert done.rc == 0, done
    rows = list(csv.reader(io.StringIO(done.out)))
    assert rows[0] == ["type", "n"]
    assert rows[1:] == [[t, str(n)] for t, n in sorted(Counter(e.type for e in events).items())]

    done = await run_vigil(
        "sql", "SELECT incident_id, status, resolution FROM incidents ORDER BY incident_id", env=env
    )
    assert done.rc == 0, done
    table = done.out
    for column in ("incident_id", "status", "resolution"):
        assert column in table.splitlines()[1], table
    resolved_id = events[1].incident_id
    assert resolved_id.startswith("sample-")
    assert [resolved_id, "resolved", "remediation"] == _table_row(table, resolved_id)
    assert _table_row(table, "disk-0") == ["disk-0", "diagnosed", ""]  # investigated
    assert _table_row(table, "disk-1") == ["disk-1", "diagnosed", ""]

    done = await run_vigil(
        "sql", "SELECT seq FROM events ORDER BY seq", "-f", "json", "--max-rows", "3", env=env
    )
    assert done.rc == 0, done
    assert json.loads(done.out) == [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    assert "only the first 3 rows" in done.err

    # Once `up` has stopped, the same query opens the file directly and agrees.
    up.proc.send_signal(signal.SIGTERM)
    assert await up.exit_code() == 0
    assert not db_locked(data / "vigil.duckdb")
    done = await run_vigil("sql", COUNT_EVENTS, "--format", "json", env=env)
    assert done.rc == 0, done
    assert json.loads(done.out) == [{"n": settled.events}]


def _table_row(table: str, first_cell: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{table}")


# -- 2. refusals ---------------------------------------------------------------------------

REFUSED = [
    ("DROP TABLE events", "DROP is refused"),
    ("DELETE FROM events", "DELETE is refused"),
    ("INSERT INTO projector_meta VALUES ('k', 'v')", "INSERT is refused"),
    ("SELECT * FROM read_csv('/etc/hostname')", "reading files is not allowed: '/etc/hostname'"),
    ("SELECT 1; DROP TABLE events", "one statement per query, found 2"),
    ("ATTACH '{tmp}/attached.duckdb' AS x", "ATTACH is refused"),
    ("COPY events TO '{tmp}/leak.csv'", "COPY is refused"),
    ("SELECT * FROM read_text('{tmp}/secret')", "reading files is not allowed"),
    ("SELECT * FROM 's3://bucket/x'", "reading files is not allowed: 's3://bucket/x' is a file"),
    ("SET enable_external_access = true", "SET is refused"),
]


async def _assert_refusals_and_nothing_changed(env: dict[str, str], events: int, tmp: Path) -> None:
    (tmp / "secret").write_text("s3cr3t")
    for query, message in REFUSED:
        done = await run_vigil("sql", query.format(tmp=tmp), env=env)
        one_line_error(done, message)
        assert "s3cr3t" not in done.err
    one_line_error(await run_vigil("sql", "SELEC 1", env=env), "SQL syntax error")
    # EXPLAIN is allowed, and EXPLAIN ANALYZE runs its statement: it must leave nothing behind.
    await run_vigil("sql", "EXPLAIN ANALYZE DELETE FROM events", env=env)
    done = await run_vigil("sql", COUNT_EVENTS, "-f", "json", env=env)
    assert json.loads(done.out) == [{"n": events}], done
    assert not files_exist(tmp / "attached.duckdb", tmp / "leak.csv")


async def test_sql_refusals_through_the_running_service(vigil_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    settled = await up_with_story(vigil_up, data)
    assert db_locked(data / "vigil.duckdb")
    await _assert_refusals_and_nothing_changed(vigil_env(data), settled.events, tmp_path)


async def test_sql_refusals_on_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ProjectionStore(data / "vigil.duckdb").close()  # the schema, as `vigil up` leaves it
    assert not db_locked(data / "vigil.duckdb")
    await _assert_refusals_and_nothing_changed(vigil_env(data), 0, tmp_path)


# -- 3. stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_up_and_its_nats_server(
    vigil_up: StartUp, tmp_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    up = await vigil_up(data)
    await up.up()
    nats = up.nats_server()
    up.proc.send_signal(sig)
    assert await up.exit_code() == 0, up.stderr
    assert up.lines[-1] == "vigil stopped"
    # `vigil up` waited for its nats-server and reaped it: it is gone, not a zombie.
    assert nats.exited()
    after = proc_info(nats.info.pid)
    assert after is None or after.start_time != nats.info.start_time  # else: a zombie
    assert not (data / "runtime.json").exists()
    assert not db_locked(data / "vigil.duckdb")


async def test_kill_9_of_up_takes_its_nats_server_along(vigil_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = await vigil_up(data)
    await up.up()
    nats, projector = up.nats_server(), up.projector()
    assert not nats.exited() and not projector.exited()
    up.proc.kill()
    assert await up.exit_code() == -signal.SIGKILL
    await nats.wait_exit(10)  # PR_SET_PDEATHSIG: the kernel told them to stop
    await projector.wait_exit(10)
    # The file is free: `vigil sql` reads it directly.
    done = await run_vigil("sql", COUNT_EVENTS, "-f", "json", env=vigil_env(data))
    assert done.rc == 0, done
    assert json.loads(done.out) == [{"n": 0}]
    # And the data dir starts again.
    again = await vigil_up(data)
    runtime = await again.up()
    assert runtime.pid == again.pid


# -- 4. clear errors ---------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_up_on_a_port_in_use(tmp_path: Path, busy_port: int) -> None:
    done = await run_vigil("up", env=vigil_env(tmp_path / "data", nats_port=str(busy_port)))
    one_line_error(done, f"port {busy_port}", "already in use", "VIGIL_NATS_PORT")


async def test_up_on_an_http_port_in_use(tmp_path: Path, busy_port: int) -> None:
    done = await run_vigil("up", env=vigil_env(tmp_path / "data", http_port=str(busy_port)))
    one_line_error(done, f"127.0.0.1:{busy_port}", "in use", "VIGIL_HTTP_PORT")


@pytest.mark.parametrize("command", ["up", "demo", "replay"])
async def test_one_vigil_per_data_dir(tmp_path: Path, vigil_up: StartUp, command: str) -> None:
    """A second Vigil on the same data dir would run a second nats-server on the same store."""
    data = tmp_path / "data"
    first = await vigil_up(data)
    runtime = await first.up()
    done = await run_vigil(command, env=vigil_env(data))
    if command == "replay":  # it names the file it would replace
        one_line_error(done, f"{data / 'vigil.duckdb'} is in use", "--output")
    else:
        one_line_error(done, f"data dir {data} is in use by vigil pid {first.pid}")
    # The first one is untouched and still answers.
    again = await run_vigil("sql", "SELECT 1 AS one", "--format", "json", env=vigil_env(data))
    assert again.rc == 0 and '"one":1' in again.out
    assert read_runtime(data) == runtime


@pytest.mark.parametrize("command", ["up", "demo", "replay"])
async def test_unusable_data_dir(tmp_path: Path, command: str) -> None:
    (tmp_path / "afile").write_text("not a directory")
    data = tmp_path / "afile" / "data"
    done = await run_vigil(command, env=vigil_env(data))
    one_line_error(done, f"data dir {data} ", "Not a directory", "VIGIL_DATA_DIR")


@pytest.mark.parametrize("command", ["up", "projector", "replay"])
async def test_unusable_data_dir_with_external_nats(
    tmp_path: Path, nats_server: EmbeddedNats, command: str
) -> None:
    (tmp_path / "afile").write_text("not a directory")
    data = tmp_path / "afile" / "data"
    done = await run_vigil(command, env=vigil_env(data, nats_url=nats_server.url))
    one_line_error(done, f"data dir {data} ", "Not a directory", "VIGIL_DATA_DIR")


async def test_replay_output_in_unusable_place(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    out = tmp_path / "afile" / "x.duckdb"
    done = await run_vigil("replay", "--output", str(out), env=vigil_env(tmp_path / "data"))
    one_line_error(done, str(out.parent), "--output")


@pytest.mark.parametrize(
    ("setting", "value", "needles"),
    [
        ("http_port", "notaport", ("VIGIL_HTTP_PORT", "integer")),
        ("nats_port", "70000", ("VIGIL_NATS_PORT", "65535")),
        ("nats_url", "localhost:4222", ("VIGIL_NATS_URL", "'localhost:4222'", "nats://")),
        ("projector_batch", "0", ("VIGIL_PROJECTOR_BATCH",)),
        ("config", "/nonexistent/vigil.yaml", ("VIGIL_CONFIG=/nonexistent/vigil.yaml",)),
    ],
)
@pytest.mark.parametrize("command", ["up", "sql"])
async def test_bad_setting(
    tmp_path: Path, setting: str, value: str, needles: tuple[str, ...], command: str
) -> None:
    args = ["sql", "SELECT 1"] if command == "sql" else [command]
    done = await run_vigil(*args, env=vigil_env(tmp_path / "data", **{setting: value}))
    one_line_error(done, *needles)
    assert not (tmp_path / "data").exists()  # nothing was started or created


async def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("http_port: [\n")
    done = await run_vigil("sql", "SELECT 1", env=vigil_env(tmp_path, config=str(bad)))
    one_line_error(done, f"VIGIL_CONFIG={bad}", "not valid YAML", "line 2")
    bad.write_text("- nats_url\n- http_port\n")
    done = await run_vigil("sql", "SELECT 1", env=vigil_env(tmp_path, config=str(bad)))
    one_line_error(done, f"VIGIL_CONFIG={bad}", "mapping")
    bad.write_text("http_prot: 8081\n")
    done = await run_vigil("sql", "SELECT 1", env=vigil_env(tmp_path, config=str(bad)))
    one_line_error(done, "VIGIL_HTTP_PROT", "not permitted")


async def test_projector_needs_a_nats_url(tmp_path: Path) -> None:
    done = await run_vigil("projector", env=vigil_env(tmp_path / "data"))
    one_line_error(done, "VIGIL_NATS_URL is required")


async def test_detector_needs_nats_prometheus_and_rules(tmp_path: Path) -> None:
    done = await run_vigil("detector", env=vigil_env(tmp_path))
    one_line_error(done, "VIGIL_NATS_URL is required")
    nats = {"nats_url": "nats://127.0.0.1:1"}
    done = await run_vigil("detector", env=vigil_env(tmp_path, **nats))
    one_line_error(done, "VIGIL_PROMETHEUS_URL is required")
    prometheus = {"prometheus_url": "http://127.0.0.1:1"}
    unset = "VIGIL_RULES is not set: the detector needs a rules file, e.g. deploy/rules.yaml"
    done = await run_vigil("detector", env=vigil_env(tmp_path, **nats, **prometheus))
    assert one_line_error(done) == f"vigil: {unset}"
    done = await run_vigil("up", env=vigil_env(tmp_path / "data", **prometheus))
    assert one_line_error(done) == f"vigil: {unset}"
    assert not (tmp_path / "data" / "nats").exists()  # refused before anything started
    missing = tmp_path / "nope.yaml"
    done = await run_vigil(
        "detector", env=vigil_env(tmp_path, rules=str(missing), **nats, **prometheus)
    )
    one_line_error(done, f"rules file {missing}", "VIGIL_RULES")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: cpu\n    query: up\n    interval: 1s\n")
    done = await run_vigil("up", env=vigil_env(tmp_path / "data", rules=str(rules), **prometheus))
    one_line_error(done, f"rules file {rules}", "cpu", "detector", "VIGIL_RULES")
    assert not (tmp_path / "data" / "nats").exists()  # refused before anything started


@pytest.mark.parametrize("command", ["projector", "up", "replay"])
async def test_unreachable_nats_is_one_line_not_a_hang(tmp_path: Path, command: str) -> None:
    env = {**vigil_env(tmp_path / "data"), "VIGIL_NATS_URL": "nats://127.0.0.1:1"}
    done = await run_vigil(command, env=env)
    one_line_error(done, "cannot reach NATS at nats://127.0.0.1:1", "VIGIL_NATS_URL")


async def test_sql_without_a_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = await run_vigil("sql", "SELECT 1", env=vigil_env(data))
    one_line_error(done, f"no database at {data / 'vigil.duckdb'}", "vigil up", "vigil replay")
    assert not data.exists()


# -- 5. replay -------------------------------------------------------------------------------


async def test_replay_rebuilds_the_file_from_the_stream(
    vigil_up: StartUp, tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    data = tmp_path / "data"
    db = data / "vigil.duckdb"
    settled = await up_with_story(vigil_up, data, nats_url=nats_server.url)
    up = settled.up
    assert "(external)" in up.lines[0]
    env = vigil_env(data, nats_url=nats_server.url)

    done = await run_vigil("replay", env=env)
    one_line_error(done, f"{db} is in use", "--output")

    up.proc.send_signal(signal.SIGTERM)
    assert await up.exit_code() == 0
    before = snapshot(db)
    n = settled.events
    assert len(before["events"]) == n and len(before["incidents"]) == 3
    assert len(before["saga_steps"]) == 1 and len(before["sagas"]) == 1
    assert len(before["investigations"]) == 3  # the resolved incident's, and the responder's two
    assert len(before["tool_calls"]) == 3 + 2 * 5  # the resolved incident's, and five of each

    # Damage the read model, so only a rebuild from the stream can bring it back.
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM incidents")
    con.execute("DELETE FROM tool_calls")
    con.execute("DELETE FROM investigations")
    con.execute("UPDATE events SET source = 'tampered' WHERE seq = 1")
    con.close()
    assert snapshot(db) != before

    done = await run_vigil("replay", env=env)
    assert done.rc == 0, done
    assert f"replayed {n} events (0 dead letters) up to sequence {n} into {db}" in done.out
    assert snapshot(db) == before
    assert not files_exist(Path(f"{db}.replay"))

    other = tmp_path / "elsewhere" / "copy.duckdb"
    done = await run_vigil("replay", "--output", str(other), env=env)
    assert done.rc == 0, done
    assert snapshot(other) == before


async def test_replay_with_the_embedded_broker(vigil_up: StartUp, tmp_path: Path) -> None:
    """Without VIGIL_NATS_URL replay starts the data dir's own nats-server, like `up`."""
    data = tmp_path / "data"
    db = data / "vigil.duckdb"
    up = (await up_with_story(vigil_up, data)).up
    up.proc.send_signal(signal.SIGTERM)
    assert await up.exit_code() == 0
    before = snapshot(db)
    db.unlink()
    done = await run_vigil("replay", env=vigil_env(data))
    assert done.rc == 0, done
    assert snapshot(db) == before


async def test_up_stops_with_one_line_when_its_projector_cannot_start(tmp_path: Path) -> None:
    """A role that fails at its first start cannot heal: no restarts, one line, exit 2 (a
    projector that dies later is restarted: tests/vigil/test_up_supervise.py)."""
    data = tmp_path / "data"
    (data / "vigil.duckdb").mkdir(parents=True)  # DuckDB cannot open a directory
    done = await run_vigil("up", env=vigil_env(data), timeout=30)
    line = one_line_error(done, "vigil: the projector did not start: ")
    assert f"cannot open {data / 'vigil.duckdb'}" in line and "Is a directory" in line, line


async def test_worker_needs_a_nats_url(tmp_path: Path) -> None:
    done = await run_vigil("worker", env=vigil_env(tmp_path))
    one_line_error(done, "VIGIL_NATS_URL is required")


async def test_worker_runs_what_is_requested_and_stops_on_sigterm(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        VIGIL, "worker", env=vigil_env(tmp_path, nats_url=nats_server.url),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())  # read to the end: the pipe never fills
    completed: asyncio.Future[ToolCompleted] = asyncio.get_running_loop().create_future()

    async def on_message(msg: Msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event.data, ToolCompleted) and not completed.done():
            completed.set_result(event.data)

    sub = await js.subscribe("vigil.evt.>", cb=on_message, ordered_consumer=True)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().startswith("working: 16 tool calls at once"), line
        asked = ToolRequested(tool_call_id="c1", tool_name="recent_changes",
                              now=datetime.now(UTC))  # fmt: skip
        await EventPublisher(js).publish(new_event(asked, incident_id="inc-1", source="test"))
        done = await asyncio.wait_for(completed, 20)
        assert done.tool_call_id == "c1" and done.result == {"changes": [], "total": 0}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        await sub.unsubscribe()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await errors


# -- 9. the responder and investigate ---------------------------------------------------------


async def test_responder_needs_a_nats_url_and_a_model_it_knows(tmp_path: Path) -> None:
    one_line_error(await run_vigil("responder", env=vigil_env(tmp_path)), "VIGIL_NATS_URL")
    env = vigil_env(tmp_path, nats_url="nats://127.0.0.1:1", model="nosuch:model")
    one_line_error(await run_vigil("responder", env=env), "VIGIL_MODEL='nosuch:model'")
    env = vigil_env(tmp_path, model="anthropic:claude", model_base_url="http://127.0.0.1:1/v1")
    one_line_error(await run_vigil("up", env=env), "VIGIL_MODEL must be openai:<model name>")


async def test_investigate_asks_the_running_vigil_for_a_new_attempt(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settled = await up_with_story(vigil_up, data)
    env = vigil_env(data)
    done = await run_vigil("investigate", "nosuch", env=env)
    one_line_error(done, "no incident 'nosuch'")
    runtime = read_runtime(data)
    assert runtime is not None
    nc = await connect(runtime.nats_url, name="vigil-test-watch")
    try:
        watch = await watch_events(nc)
        done = await run_vigil("investigate", "disk-0", "--by", "alice", env=env)
        assert done.rc == 0, done
        assert done.out.strip() == "incident disk-0: attempt 2 asked for by alice"
        await watch.until(lambda _: len(_concluded_of(watch, "disk-0")) == 2, "attempt 2")
    finally:
        await nc.close()
    started = [e.data for e in watch.of_type("InvestigationStarted") if e.incident_id == "disk-0"]
    assert [(s.attempt, s.requested_by) for s in started] == [(1, None), (2, "alice")]  # type: ignore[attr-defined]
    assert [c.attempt for c in _concluded_of(watch, "disk-0")] == [1, 2]
    settled.up.proc.send_signal(signal.SIGTERM)
    assert await settled.up.exit_code() == 0
    one_line_error(await run_vigil("investigate", "disk-0", env=env), "no running Vigil")


def _concluded_of(watch: EventWatch, incident: str) -> list[RootCauseConcluded]:
    return [e.data for e in watch.of_type("RootCauseConcluded") if e.incident_id == incident]  # type: ignore[misc]


async def test_up_without_the_responder_investigates_nothing(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    """VIGIL_RESPONDER_ENABLED=false: ingestion alone, no investigator nor workers among the
    roles `vigil up` supervises."""
    up = await vigil_up(tmp_path / "data", responder_enabled="false")
    await up.up()
    assert "Model  none: VIGIL_RESPONDER_ENABLED=false, no investigations" in up.lines
    metrics = up.http_url().replace("/webhooks/alertmanager", "/metrics")
    async with httpx.AsyncClient() as client:
        text = (await client.get(metrics)).text
    assert 'vigil_role_restarts_total{role="api"}' in text
    assert 'role="responder"' not in text and 'role="worker"' not in text
