"""The investigation read models through the projector: attempts, tool calls, root causes,
whatever the order the events are told in, and the same rows after a replay."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from nats.js import JetStreamContext

from eventlog.envelope import Event
from eventlog.payloads import (
    Hypothesis,
    InvestigationStarted,
    RootCauseConcluded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.payloads.investigation import RootCauseReport
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from eventlog.replay import replay
from eventlog.store import ProjectionStore
from eventlog.stream import EVENTS_STREAM
from tests.eventlog.projecting import fired, projecting, rows
from tests.eventlog.samples import T0, agent_step, concluded, event

ATTEMPT_COLUMNS = (
    "model, reason, requested_by, status, started_at, concluded_at, duration_ms, model_requests,"
    " tool_calls, input_tokens, output_tokens, cost, top_category, top_service, top_confidence,"
    " partial, partial_reason, summary"
)
ROOT_CAUSE = (
    "SELECT status, root_cause, root_cause_service, root_cause_confidence, root_cause_summary,"
    " root_cause_attempt FROM incidents"
)


def attempts(path: Path) -> dict[int, dict[str, object]]:
    """The investigations of inc-1, by attempt, as column -> value."""
    names = [n.strip() for n in ATTEMPT_COLUMNS.split(",")]
    found = rows(path, f"SELECT attempt, {ATTEMPT_COLUMNS} FROM investigations ORDER BY attempt")
    return {int(r[0]): dict(zip(names, r[1:], strict=True)) for r in found}  # type: ignore[call-overload]


async def project(js: JetStreamContext, path: Path, *batches: list[Event]) -> None:
    """Publish each batch and have it projected before the next is published, each by a new
    projector, so rows folded before are read back from the file (a projector that fails
    raises here)."""
    publisher = EventPublisher(js)
    for batch in batches:
        acks = await publisher.publish_many(batch)
        store = ProjectionStore(path)
        try:
            await Projector(js, store).catch_up({EVENTS_STREAM: acks[-1].seq})
        finally:
            store.close()


def asked(call: str, attempt: int = 1, minute: float = 0.0, tool: str = "prom") -> Event:
    return event(ToolRequested(tool_call_id=call, tool_name=tool, attempt=attempt), minute=minute)


async def test_an_attempt_is_one_row_of_what_it_did_and_concluded(
    js: JetStreamContext, db_path: Path
) -> None:
    # Ranked by the investigator: the first hypothesis is the top one, whatever the numbers.
    ranked = RootCauseReport(summary="checkout's pool ran dry", partial=True, hypotheses=[
        Hypothesis(category="dependency_failure", service="db", confidence=0.4, explanation="e"),
        Hypothesis(category="traffic_surge", service="api", confidence=0.5, explanation="e"),
    ])  # fmt: skip
    first = agent_step(0, model="gpt-x", input_tokens=1000, output_tokens=50, cost=0.25)
    second = agent_step(1, model="gpt-x", input_tokens=2000, output_tokens=80, cost=0.5)
    story = [
        fired("a", 0),
        event(InvestigationStarted(model="gpt-x", requested_by="alice"), minute=1),
        event(first, minute=1.5),
        asked("c1", minute=1.5),
        asked("c2", minute=1.5),
        event(ToolCompleted(tool_call_id="c1", tool_name="prom", duration_ms=5), minute=2),
        event(second, minute=2.5),
        event(RootCauseConcluded(report=ranked, partial_reason="step limit"), minute=3),
    ]
    await project(js, db_path, story)
    assert attempts(db_path) == {1: {
        "model": "gpt-x", "reason": "anomaly detected", "requested_by": "alice",
        "status": "partial", "started_at": T0.replace(minute=1),
        "concluded_at": T0.replace(minute=3), "duration_ms": 120_000.0, "model_requests": 2,
        "tool_calls": 2, "input_tokens": 3000, "output_tokens": 130, "cost": 0.75,
        "top_category": "dependency_failure", "top_service": "db", "top_confidence": 0.4,
        "partial": True, "partial_reason": "step limit", "summary": "checkout's pool ran dry",
    }}  # fmt: skip
    assert rows(db_path, ROOT_CAUSE) == [
        ("diagnosed", "dependency_failure", "db", 0.4, "checkout's pool ran dry", 1)
    ]


async def test_two_attempts_are_two_rows_and_the_later_one_names_the_root_cause(
    js: JetStreamContext, db_path: Path
) -> None:
    first = [
        event(InvestigationStarted(model="small"), minute=1),
        event(agent_step(0, attempt=1, model="small"), minute=1),
        asked("c1", attempt=1, minute=1),
        event(concluded("resource_saturation", "db", 0.3, attempt=1, partial_reason="timeout"),
              minute=2),
    ]  # fmt: skip
    second = [
        event(InvestigationStarted(model="large", attempt=2, reason="re-run", requested_by="bob"),
              minute=10),
        event(agent_step(0, attempt=2, model="large", input_tokens=10, cost=0.5), minute=10),
        event(agent_step(1, attempt=2, model="large", input_tokens=10, cost=0.25), minute=11),
        asked("c2", attempt=2, minute=10),
        asked("c3", attempt=2, minute=10),
        # The conclusion's own account wins over what the steps told.
        event(concluded("deploy_or_config_change", "api", 0.8, attempt=2, model_requests=3,
                        tool_calls=2, input_tokens=5000, output_tokens=700, cost=1.5,
                        summary="v2 broke it"), minute=12),
    ]  # fmt: skip
    await project(js, db_path, first, second)
    found = attempts(db_path)
    assert set(found) == {1, 2}
    one, two = found[1], found[2]
    assert (one["model"], one["status"], one["model_requests"], one["tool_calls"]) == (
        "small",
        "partial",
        1,
        1,
    )
    assert one["cost"] is None and one["top_category"] == "resource_saturation"
    assert (two["model"], two["reason"], two["requested_by"], two["status"]) == (
        "large",
        "re-run",
        "bob",
        "concluded",
    )
    assert (two["model_requests"], two["tool_calls"], two["input_tokens"], two["output_tokens"],
            two["cost"], two["duration_ms"]) == (3, 2, 5000, 700, 1.5, 120_000.0)  # fmt: skip
    assert rows(db_path, ROOT_CAUSE) == [
        ("diagnosed", "deploy_or_config_change", "api", 0.8, "v2 broke it", 2)
    ]
    assert rows(db_path, "SELECT tool_call_id, attempt FROM tool_calls ORDER BY 1") == [
        ("c1", 1), ("c2", 2), ("c3", 2)
    ]  # fmt: skip

    # The first attempt concluded again, told after the second's: its own row takes it, the
    # incident keeps the later attempt's root cause.
    late = concluded("memory_leak", "worker", 0.6, attempt=1, summary="leak")
    await project(js, db_path, [event(late, minute=13)])
    assert attempts(db_path)[1]["top_category"] == "memory_leak"
    assert rows(db_path, ROOT_CAUSE) == [
        ("diagnosed", "deploy_or_config_change", "api", 0.8, "v2 broke it", 2)
    ]


async def test_an_attempt_folds_without_its_start_and_takes_it_when_it_comes(
    js: JetStreamContext, db_path: Path
) -> None:
    unstarted = [
        event(agent_step(0, attempt=1, model="m", input_tokens=10), minute=2),
        event(concluded(attempt=1, model="m-2024"), minute=3),
        asked("c9", attempt=2, minute=4),  # an attempt told only by a tool call
    ]
    await project(js, db_path, unstarted)
    found = attempts(db_path)
    assert (found[1]["status"], found[1]["model"], found[1]["model_requests"]) == ("concluded", "m", 1)  # fmt: skip  # noqa: E501
    assert found[1]["started_at"] is None and found[1]["duration_ms"] is None
    assert (found[2]["status"], found[2]["model"], found[2]["tool_calls"]) == ("running", None, 1)

    started = InvestigationStarted(model="m", attempt=1, reason="anomaly", requested_by="carol")
    after = event(agent_step(1, attempt=1, model="m", input_tokens=99), minute=5)
    await project(js, db_path, [event(started, minute=1), after])
    one = attempts(db_path)[1]
    assert (one["status"], one["started_at"], one["duration_ms"]) == (
        "concluded",
        T0.replace(minute=1),
        120_000.0,
    )
    assert (one["reason"], one["requested_by"]) == ("anomaly", "carol")
    # A step told after its attempt's conclusion is not added: the conclusion closed the account.
    assert (one["model_requests"], one["input_tokens"]) == (1, 10)


TOOL_COLUMNS = (
    "SELECT tool_call_id, status, timed_out, error, result::VARCHAR, duration_ms, finished_at,"
    " attempt, reused_from FROM tool_calls ORDER BY tool_call_id"
)


async def test_a_late_result_after_a_timeout_completes_the_call_and_keeps_the_timeout(
    js: JetStreamContext, db_path: Path
) -> None:
    def failed(call: str, minute: float, error: str = "no answer within 30s") -> Event:
        timed_out = error.startswith("no answer")
        data = ToolFailed(tool_call_id=call, tool_name="prom", error=error, timed_out=timed_out,
                          duration_ms=30_000)  # fmt: skip
        return event(data, minute=minute)

    def completed(call: str, minute: float, reused_from: str | None = None) -> Event:
        data = ToolCompleted(tool_call_id=call, tool_name="prom", result={"v": call},
                             duration_ms=45_000, reused_from=reused_from)  # fmt: skip
        return event(data, minute=minute)

    first = [
        asked("c1", attempt=2), failed("c1", 1),  # timed out; its result comes later
        asked("c2", attempt=2), completed("c2", 1),  # its timeout is told after the result
        asked("c3", attempt=2), completed("c3", 1),
        asked("c4", attempt=2), completed("c4", 1.5, reused_from="c2"),
    ]  # fmt: skip
    later = [completed("c1", 2), failed("c2", 2), failed("c3", 2, error="cancelled")]
    await project(js, db_path, first, later)
    at = T0.replace(minute=1)
    assert rows(db_path, TOOL_COLUMNS) == [
        ("c1", "completed", True, "no answer within 30s", '{"v":"c1"}', 45_000.0,
         T0.replace(minute=2), 2, None),
        ("c2", "completed", True, "no answer within 30s", '{"v":"c2"}', 45_000.0, at, 2, None),
        ("c3", "completed", False, "cancelled", '{"v":"c3"}', 45_000.0, at, 2, None),
        ("c4", "completed", False, None, '{"v":"c4"}', 45_000.0, T0.replace(minute=1, second=30),
         2, "c2"),
    ]  # fmt: skip


async def test_a_copy_of_an_event_in_the_stream_counts_once(
    js: JetStreamContext, db_path: Path
) -> None:
    """Outside the duplicate window JetStream keeps both copies; every read model counts one."""
    story = [
        event(InvestigationStarted(model="m"), minute=1),
        event(agent_step(0, input_tokens=7, cost=0.5), minute=1),
        asked("c1", minute=1),
        event(ToolCompleted(tool_call_id="c1", tool_name="prom", duration_ms=1), minute=2),
    ]
    for copy in ("a", "b"):
        for e in story:
            ack = await js.publish(e.subject, e.to_json(), headers={"Nats-Msg-Id": f"{copy}{e.id}"})
    assert ack.seq == 2 * len(story)
    async with projecting(js, db_path, batch=3) as projector:
        await projector.wait_for(ack.seq)
    one = attempts(db_path)[1]
    assert (one["model_requests"], one["tool_calls"], one["input_tokens"], one["cost"]) == (
        1, 1, 7, 0.5
    )  # fmt: skip
    assert rows(db_path, "SELECT tool_calls, event_count FROM incidents") == [(1, 4)]
    assert rows(db_path, "SELECT count(*), any_value(status) FROM tool_calls") == [(1, "completed")]


def out_of_order_stories() -> list[list[Event]]:
    """Batches of stories told out of order, over two incidents and three attempts."""
    return [
        [fired("a", 0), event(concluded(attempt=1, model="m"), minute=3), asked("c1")],
        [event(InvestigationStarted(model="m"), minute=1), event(agent_step(0, cost=0.5))],
        [event(ToolFailed(tool_call_id="c1", tool_name="prom", error="late", timed_out=True))],
        [event(InvestigationStarted(model="n", attempt=2), "inc-2", 5), asked("c1", attempt=2)],
        [event(ToolCompleted(tool_call_id="c1", tool_name="prom", result=1, duration_ms=2)),
         event(concluded("memory_leak", attempt=2, partial_reason="budget"), "inc-2", 9)],
    ]  # fmt: skip


async def test_replay_rebuilds_the_same_investigation_rows(
    js: JetStreamContext, tmp_path: Path
) -> None:
    """Folded live a few events at a time, by projectors that start again between batches, or
    all at once by a replay: the same rows."""
    live = tmp_path / "live.duckdb"
    await project(js, live, *out_of_order_stories())
    rebuilt = tmp_path / "rebuilt.duckdb"
    await replay(js, rebuilt)
    for table in ("investigations", "tool_calls", "incidents"):
        query = f"SELECT * FROM {table} ORDER BY ALL"
        assert rows(rebuilt, query) == rows(live, query), table
    # inc-1's c1 asked for again by a second attempt: a new call, completed by the last batch
    assert rows(live, "SELECT incident_id, attempt, status FROM investigations ORDER BY 1, 2") == [
        ("inc-1", 1, "concluded"), ("inc-1", 2, "running"), ("inc-2", 2, "partial")
    ]  # fmt: skip
    assert rows(live, "SELECT attempt, status, timed_out FROM tool_calls") == [
        (2, "completed", False)
    ]


async def test_a_file_of_an_older_vigil_gets_the_investigation_columns(
    js: JetStreamContext, db_path: Path
) -> None:
    await project(js, db_path, [fired("a", 0), asked("c1"), event(concluded(), minute=1)])
    con = duckdb.connect(str(db_path))  # as the Vigil before investigations made it
    con.execute("DROP VIEW investigation_outcomes; DROP TABLE investigations")
    for table, column in [("incidents", "root_cause_service"), ("incidents", "root_cause_summary"),
                          ("incidents", "root_cause_attempt"), ("tool_calls", "attempt"),
                          ("tool_calls", "reused_from")]:  # fmt: skip
        con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    con.close()
    assert "investigations" not in {t for (t,) in rows(db_path, "SHOW TABLES")}

    later = [
        event(ToolCompleted(tool_call_id="c1", tool_name="prom", duration_ms=1, reused_from="c0")),
        event(concluded("traffic_surge", "edge", 0.7, attempt=1, summary="a surge"), minute=2),
    ]
    await project(js, db_path, later)
    assert rows(db_path, ROOT_CAUSE) == [("diagnosed", "traffic_surge", "edge", 0.7, "a surge", 1)]
    # the call was asked for before the file kept attempts: its attempt is not known
    assert rows(db_path, "SELECT status, attempt, reused_from FROM tool_calls") == [
        ("completed", None, "c0")
    ]
    assert rows(db_path, "SELECT attempt, status, top_category FROM investigations") == [
        (1, "concluded", "traffic_surge")
    ]


async def test_investigation_outcomes_per_model(js: JetStreamContext, db_path: Path) -> None:
    def attempt(incident: str, model: str, seconds: float, **conclusion: object) -> list[Event]:
        start = event(InvestigationStarted(model=model), incident)
        if not conclusion:
            return [start]
        end = concluded(**conclusion)  # type: ignore[arg-type]
        return [start, event(end, incident, seconds / 60)]

    story = [
        *attempt("i1", "small", 60, category="resource_saturation", tool_calls=1,
                 partial_reason="budget"),
        *attempt("i2", "small", 120, tool_calls=3),
        *attempt("i3", "large", 30, tool_calls=4, cost=0.5),
        *attempt("i4", "large", 0),  # still running
    ]  # fmt: skip
    await project(js, db_path, story)
    found = rows(db_path, "SELECT * FROM investigation_outcomes")
    assert found == [
        ("large", 2, 1, 0.0, 30.0, 4.0, 0.5, {"deploy_or_config_change": 1}),
        ("small", 2, 2, 0.5, 90.0, 2.0, None,
         {"deploy_or_config_change": 1, "resource_saturation": 1}),
    ]  # fmt: skip


@pytest.mark.parametrize("partial_reason", [None, "budget"])
async def test_a_report_marked_partial_or_given_a_reason_is_partial(
    js: JetStreamContext, db_path: Path, partial_reason: str | None
) -> None:
    top = Hypothesis(category="unknown", confidence=0.1, explanation="nothing moved")
    report = RootCauseReport(summary="no idea", hypotheses=[top], partial=partial_reason is None)
    conclusion = RootCauseConcluded(report=report, partial_reason=partial_reason)
    await project(js, db_path, [event(conclusion)])
    assert rows(db_path, "SELECT status, partial, partial_reason FROM investigations") == [
        ("partial", True, partial_reason)
    ]
