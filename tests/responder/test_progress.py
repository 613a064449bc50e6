"""The investigator's decisions, one crash point at a time: the events up to it, then what the
investigator does next. No broker: the decision is a pure function of the events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from eventlog.envelope import new_event
from eventlog.history import StoredEvent
from eventlog.payloads import (
    AgentStep,
    AnomalyDetected,
    InvestigationStarted,
    Payload,
    RootCauseConcluded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.payloads.investigation import Hypothesis, RootCauseReport
from responder.progress import (
    Answer,
    Conclude,
    Done,
    Limits,
    Request,
    Start,
    Turn,
    Wait,
    fold,
    next_step,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LIMITS = Limits(tool_calls=5, seconds=300)


def stored(*payloads: Payload, at: datetime = T0) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    for seq, data in enumerate(payloads, start=1):
        events.append(
            StoredEvent(new_event(data, incident_id="inc-1", source="t", occurred_at=at), seq)
        )
    return events


def anomaly(fingerprint: str = "f1") -> AnomalyDetected:
    return AnomalyDetected(origin="alertmanager", name="HighErrors", fingerprint=fingerprint,
                           starts_at=T0, service="checkout")  # fmt: skip


def started(attempt: int = 1) -> InvestigationStarted:
    return InvestigationStarted(model="builtin", attempt=attempt, now=T0)


def step(
    index: int, *calls: tuple[str, str, dict[str, Any]], attempt: int = 1, turn: int = 0
) -> AgentStep:
    parts = [{"part_kind": "tool-call", "tool_name": name, "args": args, "tool_call_id": cid}
             for cid, name, args in calls]  # fmt: skip
    return AgentStep(attempt=attempt, step=index, turn=turn, model="builtin",
                     request={"kind": "request", "parts": []},
                     response={"kind": "response", "parts": parts})  # fmt: skip


def asked(cid: str, name: str = "recent_changes", attempt: int = 1) -> ToolRequested:
    return ToolRequested(tool_call_id=cid, tool_name=name, attempt=attempt)


def done(cid: str, name: str = "recent_changes", result: Any = 1) -> ToolCompleted:
    return ToolCompleted(tool_call_id=cid, tool_name=name, result=result, duration_ms=1)


def decide(*payloads: Payload, now: datetime = T0) -> Any:
    return next_step(fold("inc-1", stored(*payloads)), now, LIMITS)


def test_the_first_anomaly_opens_attempt_one_and_a_later_one_opens_nothing() -> None:
    assert decide(anomaly()) == Start(1)
    assert decide(anomaly(), started(), anomaly("f2")) == Turn()
    assert decide() == Done()


def test_after_a_crash_between_a_step_and_its_requests_the_missing_ones_are_asked_for() -> None:
    two = step(0, ("c1", "recent_changes", {}), ("c2", "related_alerts", {}))
    answer = decide(anomaly(), started(), two, asked("c1"))
    assert isinstance(answer, Request)
    assert [c.tool_call_id for c in answer.calls] == ["c2"]


def test_a_turn_waits_for_every_result_then_the_next_turn_runs() -> None:
    two = step(0, ("c1", "recent_changes", {}), ("c2", "related_alerts", {}))
    base = (anomaly(), started(), two, asked("c1"), asked("c2", "related_alerts"))
    assert decide(*base, done("c1")) == Wait()
    failed = ToolFailed(tool_call_id="c2", tool_name="related_alerts", error="x", timed_out=True)
    assert decide(*base, done("c1"), failed) == Turn()


def test_a_recorded_answer_without_its_conclusion_is_processed_again() -> None:
    final = AgentStep(attempt=1, step=1, turn=1, model="m",
                      request={"kind": "request", "parts": []},
                      response={"kind": "response", "parts": [
                          {"part_kind": "tool-call", "tool_name": "final_result", "args": {},
                           "tool_call_id": "f"}]})  # fmt: skip
    first = step(0, ("c1", "recent_changes", {}))
    assert decide(anomaly(), started(), first, asked("c1"), done("c1"), final) == Turn()


def test_the_same_call_again_reuses_the_recorded_result_and_a_failed_one_runs_again() -> None:
    first = step(0, ("c1", "recent_changes", {"hours": 3}), ("c2", "related_alerts", {}))
    again = step(1, ("c3", "recent_changes", {"hours": 3}), ("c4", "related_alerts", {}), turn=1)
    failed = ToolFailed(tool_call_id="c2", tool_name="related_alerts", error="down")
    answer = decide(
        anomaly(), started(), first, asked("c1"), asked("c2"), done("c1"), failed, again
    )
    assert isinstance(answer, Request)
    assert [c.tool_call_id for c in answer.calls] == ["c4"]
    assert [(c.tool_call_id, r.tool_call_id) for c, r in answer.reuses] == [("c3", "c1")]


def test_the_same_call_twice_in_one_turn_runs_once_and_the_twin_waits_for_it() -> None:
    twins = step(0, ("c1", "recent_changes", {"hours": 3}), ("c2", "recent_changes", {"hours": 3}))
    answer = decide(anomaly(), started(), twins)
    assert isinstance(answer, Request)
    assert [c.tool_call_id for c in answer.calls] == ["c1"] and answer.reuses == []
    assert decide(anomaly(), started(), twins, asked("c1")) == Wait()
    answer = decide(anomaly(), started(), twins, asked("c1"), done("c1"))
    assert isinstance(answer, Request)
    assert [(c.tool_call_id, r.tool_call_id) for c, r in answer.reuses] == [("c2", "c1")]


def test_limits_conclude_the_attempt_as_partial() -> None:
    many = step(0, *[(f"c{i}", "prometheus_query", {"query": f"q{i}"}) for i in range(6)])
    assert isinstance(decide(anomaly(), started(), many), Conclude)
    late = T0 + timedelta(seconds=301)
    assert isinstance(decide(anomaly(), started(), now=late), Conclude)


def test_a_concluded_attempt_is_done_and_a_new_attempt_starts_over() -> None:
    report = RootCauseReport(summary="s", hypotheses=[
        Hypothesis(category="unknown", confidence=0.5, explanation="e")])  # fmt: skip
    concluded = RootCauseConcluded(attempt=1, report=report)
    assert decide(anomaly(), started(), concluded) == Done()
    assert decide(anomaly(), started(), concluded, started(2)) == Turn()
    # a step of the first attempt, recorded late, is not the second attempt's
    assert decide(anomaly(), started(), concluded, started(2), step(0, ("c1", "x", {}))) == Turn()


def test_the_fences_are_the_last_step_and_the_last_attempt_in_the_stream() -> None:
    inv = fold("inc-1", stored(anomaly(), started(), step(0, ("c1", "x", {})), asked("c1")))
    assert (inv.last_started_seq, inv.last_step_seq) == (2, 3)


def test_an_attempt_asked_for_before_the_last_ended_ends_the_last_as_superseded() -> None:
    waiting = step(0, ("c1", "recent_changes", {}))
    answer = decide(anomaly(), started(), waiting, asked("c1"), started(2))
    assert answer == Conclude("superseded by attempt 2", 1)
    # its late outcome is its own, not the new attempt's
    inv = fold("inc-1", stored(anomaly(), started(), waiting, asked("c1"), started(2),
                               ToolCompleted(tool_call_id="c1", tool_name="x", duration_ms=1,
                                             attempt=1)))  # fmt: skip
    assert "c1" in inv.attempts[0].outcomes and not inv.attempts[1].outcomes


def test_a_recorded_valid_report_is_the_answer_and_a_call_beside_it_is_not_made() -> None:
    good = report_dict("c1")
    both = AgentStep(attempt=1, step=1, turn=1, model="m", request={"kind": "request", "parts": []},
                     response={"kind": "response", "parts": [
                         {"part_kind": "tool-call", "tool_name": "recent_changes", "args": {},
                          "tool_call_id": "c2"},
                         {"part_kind": "tool-call", "tool_name": "final_result", "args": good,
                          "tool_call_id": "f"}]})  # fmt: skip
    first = step(0, ("c1", "recent_changes", {"hours": 1}))
    answer = decide(anomaly(), started(), first, asked("c1"), done("c1"), both)
    assert isinstance(answer, Answer) and answer.report.hypotheses[0].evidence == ["c1"]
    made_up = AgentStep(**{**both.model_dump(), "response": {"kind": "response", "parts": [
        {"part_kind": "tool-call", "tool_name": "final_result", "args": report_dict("nope"),
         "tool_call_id": "f"}]}})  # fmt: skip
    assert decide(anomaly(), started(), first, asked("c1"), done("c1"), made_up) == Turn()


def report_dict(*evidence: str) -> dict[str, Any]:
    return {"summary": "s", "hypotheses": [{"category": "unknown", "confidence": 0.5,
            "explanation": "e", "evidence": list(evidence)}]}  # fmt: skip
