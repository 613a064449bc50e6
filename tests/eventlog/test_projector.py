"""The projector: read models folded right, exactly once across crashes, rebuilt by replay."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import duckdb
import orjson
import pytest
from nats.js import JetStreamContext

from eventlog.payloads import (
    AnomalyDetected,
    AnomalyResolved,
    AnomalyWithdrawn,
    CompensationStarted,
    CompensationSucceeded,
    IncidentAcknowledged,
    IncidentResolved,
    InvestigationStarted,
    SagaCompensated,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from eventlog.replay import replay
from eventlog.schema import READ_MODEL_TABLES
from eventlog.sql_service import request_sql
from eventlog.store import ProjectionStore
from eventlog.stream import DEAD_LETTER_STREAM, EVENTS_STREAM
from tests.eventlog.projecting import fired, projecting, rows
from tests.eventlog.resolved_incident import resolved_incident
from tests.eventlog.samples import T0, concluded, event, steps
from vigil.broker import EmbeddedNats
from vigil.runtime import read_runtime

REPO = Path(__file__).resolve().parents[2]


async def test_incident_read_model_follows_the_story(js: JetStreamContext, db_path: Path) -> None:
    story = [
        fired("a", 0),
        fired("b", 1, severity="critical"),
        event(InvestigationStarted(model="builtin"), minute=2),
        event(ToolRequested(tool_call_id="c1", tool_name="prom"), minute=2),
        event(ToolRequested(tool_call_id="c2", tool_name="logs"), minute=2),
        event(ToolCompleted(tool_call_id="c1", tool_name="prom", duration_ms=5, result=[1])),
        event(ToolFailed(tool_call_id="c2", tool_name="logs", error="boom", timed_out=True)),
        event(concluded("deploy_or_config_change", "api", 0.7), minute=4),
        event(IncidentAcknowledged(by="alice"), minute=5),
        event(IncidentAcknowledged(by="bob"), minute=6),
        event(AnomalyResolved(origin="alertmanager", name="HighLatency", fingerprint="a",
                              starts_at=T0, ends_at=T0), minute=7),
        event(IncidentResolved(how="alert_resolved"), minute=8),
    ]  # fmt: skip
    acks = await EventPublisher(js).publish_many(story)
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
        (incident,) = projector.store.con.execute(
            "SELECT status, severity, root_cause, root_cause_confidence, acknowledged_by, firing,"
            " anomalies, tool_calls, event_count, resolution, opened_at, resolved_at"
            " FROM incidents"
        ).fetchall()
        tools = projector.store.con.execute(
            "SELECT tool_call_id, status, duration_ms, timed_out, error, result::VARCHAR"
            " FROM tool_calls ORDER BY tool_call_id"
        ).fetchall()
    status, severity, cause, conf, acked_by, firing, anomalies, tool_calls, count, how, opened, resolved = incident  # fmt: skip  # noqa: E501
    assert (status, severity, cause, conf, acked_by) == ("resolved", "critical", "deploy_or_config_change", 0.7, "alice")  # fmt: skip  # noqa: E501
    assert firing == ["b"]
    assert (anomalies, tool_calls, count, how) == (2, 2, 12, "alert_resolved")
    assert opened == T0 and (resolved - opened).total_seconds() == 8 * 60
    assert tools == [("c1", "completed", 5.0, False, None, "[1]"), ("c2", "failed", 0.0, True, "boom", None)]  # fmt: skip  # noqa: E501


async def test_a_new_firing_reopens_a_resolved_incident(
    js: JetStreamContext, db_path: Path
) -> None:
    story = [fired("a", 0), event(IncidentResolved(how="manual"), minute=1), fired("z", 2)]
    acks = await EventPublisher(js).publish_many(story)
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT status, resolved_at, firing FROM incidents") == [
        ("open", None, ["a", "z"])
    ]


async def test_withdrawn_alerts_leave_firing_and_endings_alone_open_no_incident(
    js: JetStreamContext, db_path: Path
) -> None:
    withdrawn = AnomalyWithdrawn(origin="alertmanager", fingerprint="a", starts_at=T0)
    back = AnomalyDetected(origin="alertmanager", name="HighLatency", fingerprint="a",
                           starts_at=T0, service="api", returned=True)  # fmt: skip
    resolved = AnomalyResolved(origin="alertmanager", name="Other", fingerprint="q",
                               starts_at=T0, ends_at=T0)  # fmt: skip
    story = [fired("a", 0), fired("b", 0), event(withdrawn, minute=1)]
    story += [event(resolved, "inc-2", 1), event(withdrawn, "inc-3", 1)]  # never seen firing
    acks = await EventPublisher(js).publish_many(story)
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT incident_id, firing, anomalies FROM incidents") == [
        ("inc-1", ["b"], 2)
    ]
    acks = await EventPublisher(js).publish_many([event(back, minute=2)])
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT firing, anomalies FROM incidents") == [(["b", "a"], 2)]


async def test_the_end_of_an_older_firing_leaves_the_newer_one_firing(
    js: JetStreamContext, db_path: Path
) -> None:
    """A retry can append the withdrawal of a series' old firing after its new firing: the
    read model must not take the new one for ended."""
    later = T0 + timedelta(hours=3)
    new = AnomalyDetected(origin="alertmanager", name="HighLatency", fingerprint="a",
                          starts_at=later, service="api")  # fmt: skip
    old_ended = AnomalyWithdrawn(origin="alertmanager", fingerprint="a", starts_at=T0)
    new_ended = AnomalyResolved(origin="alertmanager", name="HighLatency", fingerprint="a",
                                starts_at=later, ends_at=later)  # fmt: skip
    story = [fired("a", 0), event(new, minute=180), event(old_ended, minute=181)]
    acks = await EventPublisher(js).publish_many(story)
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT firing, firing_since FROM incidents") == [(["a"], [later])]
    acks = await EventPublisher(js).publish_many([event(new_ended, minute=182)])
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT firing, firing_since FROM incidents") == [([], [])]


async def test_a_file_of_an_older_vigil_gets_the_new_columns(
    js: JetStreamContext, db_path: Path
) -> None:
    acks = await EventPublisher(js).publish_many([fired("a", 0)])
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    con = duckdb.connect(str(db_path))
    con.execute("ALTER TABLE incidents DROP COLUMN firing_since")  # as an older Vigil made it
    con.close()
    resolved = AnomalyResolved(origin="alertmanager", name="HighLatency", fingerprint="a",
                               starts_at=T0, ends_at=T0)  # fmt: skip
    acks = await EventPublisher(js).publish_many([fired("b", 1), event(resolved, minute=2)])
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT firing, firing_since FROM incidents") == [(["b"], [T0])]


async def test_saga_steps_track_compensation(js: JetStreamContext, db_path: Path) -> None:
    story = [
        event(SagaStarted(saga_id="s", steps=[{"action": "a"}, {"action": "b"}])),  # type: ignore[list-item]
        event(SagaStepStarted(saga_id="s", step=0, action="a", idempotency_key="s/0")),
        event(SagaStepSucceeded(saga_id="s", step=0, action="a", output={"ok": True})),
        event(SagaStepStarted(saga_id="s", step=1, action="b", idempotency_key="s/1")),
        event(SagaStepFailed(saga_id="s", step=1, action="b", error="quota")),
        event(CompensationStarted(saga_id="s", step=0, action="a")),
        event(CompensationSucceeded(saga_id="s", step=0, action="a")),
    ]
    acks = await EventPublisher(js).publish_many(story)
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(
        db_path, "SELECT step, status, error, idempotency_key FROM saga_steps ORDER BY step"
    ) == [(0, "compensated", None, "s/0"), (1, "failed", "quota", "s/1")]
    assert rows(db_path, "SELECT status FROM incidents") == [("remediating",)]
    ended = await EventPublisher(js).publish(event(SagaCompensated(saga_id="s", reason="b")))
    async with projecting(js, db_path) as projector:
        await projector.wait_for(ended.seq)
    # Undone: no longer remediating; as it was before, with its root cause known.
    assert rows(db_path, "SELECT status FROM incidents") == [("diagnosed",)]


async def test_same_event_id_stored_twice_in_the_stream_is_one_row(
    js: JetStreamContext, db_path: Path
) -> None:
    """Outside the duplicate window JetStream keeps both copies; the read model keeps one."""
    e = fired("a", 0)
    await js.publish(e.subject, e.to_json(), headers={"Nats-Msg-Id": "first"})
    ack = await js.publish(e.subject, e.to_json(), headers={"Nats-Msg-Id": "second"})
    assert ack.seq == 2
    async with projecting(js, db_path) as projector:
        await projector.wait_for(2)
    assert rows(db_path, "SELECT count(*) FROM events") == [(1,)]
    assert rows(db_path, "SELECT anomalies, event_count FROM incidents") == [(1, 1)]


async def test_malformed_messages_become_dead_letter_rows(
    js: JetStreamContext, db_path: Path
) -> None:
    good = steps(3)
    await EventPublisher(js).publish_many(good[:1])
    await js.publish("vigil.evt.inc-1.AgentStep", b"{not json")
    misrouted = good[1]
    await js.publish("vigil.evt.other.AgentStep", misrouted.to_json())
    acks = await EventPublisher(js).publish_many(good[2:])
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT seq FROM events ORDER BY seq") == [(1,), (4,)]
    letters = rows(
        db_path,
        "SELECT stream_seq, subject, reason FROM dead_letters WHERE consumer = 'projector'"
        " AND stream = 'VIGIL_EVENTS' ORDER BY 1",
    )
    assert [(s, subj) for s, subj, _ in letters] == [
        (2, "vigil.evt.inc-1.AgentStep"),
        (3, "vigil.evt.other.AgentStep"),
    ]
    assert "Invalid JSON" in letters[0][2]
    assert "does not match vigil.evt.inc-1.AgentStep" in letters[1][2]


async def test_restart_continues_where_it_stopped(js: JetStreamContext, db_path: Path) -> None:
    publisher = EventPublisher(js)
    first = await publisher.publish_many(steps(300))
    async with projecting(js, db_path) as projector:
        await projector.wait_for(first[-1].seq)
    second = await publisher.publish_many(steps(300, incident="inc-2"))
    async with projecting(js, db_path) as projector:
        await projector.wait_for(second[-1].seq)
    assert rows(db_path, "SELECT count(*), count(DISTINCT id), max(seq) FROM events") == [
        (600, 600, 600)
    ]
    assert rows(db_path, "SELECT incident_id, event_count FROM incidents ORDER BY 1") == [
        ("inc-1", 300),
        ("inc-2", 300),
    ]


CHECKPOINT_SQL = "SELECT coalesce(max(last_seq), 0) FROM projector_checkpoints"


async def reach(js: JetStreamContext, data_dir: Path, target: int, deadline: float = 60) -> None:
    """Wait until the projector process has committed `target`. It runs in another process,
    so there is no event to await: ask its SQL service, briefly and with a deadline."""
    runtime = read_runtime(data_dir)
    assert runtime is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    for _ in range(100_000):
        result = await request_sql(js._nc, runtime.sql_subject, CHECKPOINT_SQL, timeout=5)
        if int(result.rows[0][0]) >= target:
            return
        assert loop.time() < end, f"projector did not reach {target} in {deadline}s"
        await asyncio.sleep(0.01)


async def _start_projector(url: str, data_dir: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "VIGIL_NATS_URL": url, "VIGIL_DATA_DIR": str(data_dir),
           "VIGIL_PROJECTOR_BATCH": "250"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "projector", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"projecting", line
    return proc


@pytest.mark.timeout(120)
async def test_kill_9_at_any_moment_then_restart_gives_exact_counts(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    total = 30_000
    publisher = EventPublisher(js)
    for i in range(0, total, 2000):
        await publisher.publish_many(steps(2000, incident=f"inc-{i // 2000}"))
    data_dir = tmp_path / "data"
    targets = [total // 6, total // 2, (5 * total) // 6]
    proc: asyncio.subprocess.Process | None = None
    try:
        for target in targets:
            proc = await _start_projector(nats_server.url, data_dir)
            await reach(js, data_dir, target)  # then kill it mid-stream, without warning
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            (data_dir / "runtime.json").unlink(missing_ok=True)
        proc = await _start_projector(nats_server.url, data_dir)
        await reach(js, data_dir, total)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    messages = (await js.stream_info(EVENTS_STREAM)).state.messages
    db = data_dir / "vigil.duckdb"
    assert rows(db, "SELECT count(*), count(DISTINCT id), count(DISTINCT seq) FROM events") == [
        (messages, messages, messages)
    ]
    assert rows(db, "SELECT sum(event_count) FROM incidents") == [(messages,)]


async def test_replay_rebuilds_the_same_rows(js: JetStreamContext, tmp_path: Path) -> None:
    publisher = EventPublisher(js)
    await publisher.publish_many(resolved_incident())
    await publisher.publish_many([fired("a", 0, "inc-9"), fired("b", 1, "inc-9")])
    await js.publish("vigil.evt.inc-9.AgentStep", b"garbage")
    acks = await publisher.publish_many(steps(500, incident="inc-9"))
    live = tmp_path / "live.duckdb"
    async with projecting(js, live) as projector:
        await projector.wait_for(acks[-1].seq)
    rebuilt = tmp_path / "rebuilt.duckdb"
    report = await replay(js, rebuilt)
    assert report.events == 20 + 2 + 500 and report.dead_letters == 1
    for table in READ_MODEL_TABLES:
        query = f"SELECT * FROM {table} ORDER BY ALL"
        assert rows(rebuilt, query) == rows(live, query), table
    # the resolved incident's investigation, and inc-9's steps of an attempt never seen starting
    assert rows(rebuilt, "SELECT status, model_requests FROM investigations ORDER BY 1") == [
        ("concluded", 2),
        ("running", 500),
    ]
    assert rows(rebuilt, "SELECT saga_id, status, verification FROM sagas") == [
        ("saga-1", "completed", "passed")
    ]
    assert rows(rebuilt, "SELECT last_seq FROM projector_checkpoints ORDER BY stream") == rows(
        live, "SELECT last_seq FROM projector_checkpoints ORDER BY stream"
    )
    # Replaying over an existing file replaces it whole.
    await replay(js, live)
    assert rows(live, "SELECT count(*) FROM events") == [(522,)]
    assert EVENTS_STREAM in {s for (s,) in rows(live, "SELECT stream FROM projector_checkpoints")}


async def test_a_tool_call_id_used_again_updates_its_row(
    js: JetStreamContext, db_path: Path
) -> None:
    """Models number their calls per turn, so an id can come back in a later batch."""
    publisher = EventPublisher(js)
    first = [
        event(ToolRequested(tool_call_id="call-0", tool_name="prom", turn=0)),
        event(ToolCompleted(tool_call_id="call-0", tool_name="prom", duration_ms=1)),
    ]
    again = [event(ToolRequested(tool_call_id="call-0", tool_name="prom", turn=1), minute=5)]
    async with projecting(js, db_path) as projector:
        acks = await publisher.publish_many(first)
        await projector.wait_for(acks[-1].seq)
        acks = await publisher.publish_many(again)
        await projector.wait_for(acks[-1].seq)
    assert rows(
        db_path, "SELECT tool_call_id, turn, status, result, count(*) OVER () FROM tool_calls"
    ) == [("call-0", 1, "requested", None, 1)]  # the new call has no outcome yet


async def test_a_failed_write_stops_the_projector_with_its_cause(
    js: JetStreamContext, db_path: Path
) -> None:
    store = ProjectionStore(db_path)
    projector = Projector(js, store, batch=50)
    task = asyncio.create_task(projector.run(asyncio.Event()))
    acks = await EventPublisher(js).publish_many(steps(10))
    await projector.wait_for(acks[-1].seq)
    store.con.close()  # the file's connection is gone: the next write must fail loudly
    # One batch only: no later fetch would bring the failure to light.
    await EventPublisher(js).publish_many(steps(5, incident="inc-2"))
    with pytest.raises(duckdb.ConnectionException):
        await asyncio.wait_for(task, 20)


async def test_only_canonical_json_is_an_event(js: JetStreamContext, db_path: Path) -> None:
    """The projector stores the bytes as they came, so the wire is strict: forms pydantic could
    coerce but DuckDB would read otherwise (an epoch-number time, a urn:uuid id) are dead
    letters, as is a time without a zone; the projector keeps going either way."""
    base = orjson.loads(steps(1)[0].to_json())
    odd = {
        "epoch time": {**base, "id": str(uuid.uuid4()), "occurred_at": 1764000000},
        "urn id": {**base, "id": f"urn:uuid:{uuid.uuid4()}"},
        "naive time": {**base, "id": str(uuid.uuid4()), "occurred_at": "2026-11-24T12:00:00"},
        "string number": {**base, "id": str(uuid.uuid4()), "schema_version": "1"},
    }
    for body in odd.values():
        await js.publish("vigil.evt.inc-1.AgentStep", orjson.dumps(body))
    acks = await EventPublisher(js).publish_many(steps(1, incident="inc-2"))
    async with projecting(js, db_path) as projector:
        await projector.wait_for(acks[-1].seq)
    assert rows(db_path, "SELECT seq FROM events") == [(5,)]
    reasons = [r for (r,) in rows(db_path, "SELECT reason FROM dead_letters ORDER BY stream_seq")]
    assert len(reasons) == 4
    assert "occurred_at" in reasons[0] and "id" in reasons[1] and "8-4-4-4-12" in reasons[1]
    assert "timezone" in reasons[2].lower() and "schema_version" in reasons[3]


@pytest.mark.timeout(60)
async def test_replay_finishes_over_odd_dead_letter_streams(
    js: JetStreamContext, tmp_path: Path
) -> None:
    """A message on vigil.dlq.* that is not a dead letter, then a purged dead-letter stream:
    neither may leave replay waiting for a sequence that will never be applied."""
    acks = await EventPublisher(js).publish_many(steps(20))
    await js.publish("vigil.dlq.someone", b"not a dead letter")
    report = await asyncio.wait_for(replay(js, tmp_path / "a.duckdb"), 30)
    assert report.events == 20 and report.dead_letters == 0
    await js.purge_stream(DEAD_LETTER_STREAM)
    report = await asyncio.wait_for(replay(js, tmp_path / "b.duckdb"), 30)
    assert report.events == 20 and report.last_seq == acks[-1].seq


async def test_a_deleted_consumer_is_noticed_and_recreated(
    js: JetStreamContext, db_path: Path
) -> None:
    """A push consumer that disappears just goes quiet; the projector must notice."""
    store = ProjectionStore(db_path)
    projector = Projector(js, store, batch=100, fetch_timeout=0.1, check_every=3)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        first = await EventPublisher(js).publish_many(steps(10))
        await projector.wait_for(first[-1].seq)
        await js.delete_consumer(EVENTS_STREAM, projector.durable)
        later = await EventPublisher(js).publish_many(steps(10, incident="inc-2"))
        await asyncio.wait_for(projector.wait_for(later[-1].seq), 20)
    finally:
        stop.set()
        await task
        store.close()
    assert rows(db_path, "SELECT count(*), count(DISTINCT id) FROM events") == [(20, 20)]
