"""The investigation folds as pure functions: the order events come in and where a batch ends
change nothing they should not."""

from __future__ import annotations

import itertools

import pytest

from eventlog.envelope import Event
from eventlog.investigations import fold_investigation, fold_tool_call
from eventlog.payloads import InvestigationStarted, ToolCompleted, ToolFailed, ToolRequested
from tests.eventlog.samples import agent_step, concluded, event

TOTALS = concluded(model="m", model_requests=2, tool_calls=2, input_tokens=30, cost=0.5)
ATTEMPT = [
    event(InvestigationStarted(model="m", requested_by="alice"), minute=1),
    event(agent_step(0, input_tokens=10, cost=0.5), minute=2),
    event(agent_step(1, input_tokens=20), minute=3),
    event(ToolRequested(tool_call_id="c1", tool_name="prom"), minute=2),
    event(ToolRequested(tool_call_id="c2", tool_name="logs"), minute=2),
    event(TOTALS, minute=4),
]


def test_an_attempt_whose_conclusion_carries_its_totals_folds_the_same_in_any_order() -> None:
    expected = fold_investigation(None, ATTEMPT)
    assert (expected.status, expected.model_requests, expected.tool_calls) == ("concluded", 2, 2)
    assert (expected.duration_ms, expected.requested_by) == (180_000.0, "alice")
    for order in itertools.permutations(ATTEMPT):
        assert fold_investigation(None, order) == expected, [e.type for e in order]


def test_an_attempt_folds_the_same_whatever_batches_it_comes_in() -> None:
    untold = [e for e in ATTEMPT if e.type != "RootCauseConcluded"] + [
        event(concluded(model="m"), minute=4)  # no totals: the steps are counted
    ]
    whole = fold_investigation(None, untold)
    assert (whole.model_requests, whole.input_tokens, whole.cost) == (2, 30, 0.5)
    for cut in range(1, len(untold)):
        assert fold_investigation(fold_investigation(None, untold[:cut]), untold[cut:]) == whole


def completed(minute: float) -> Event:
    done = ToolCompleted(tool_call_id="c1", tool_name="prom", result=[1], duration_ms=9000)
    return event(done, minute=minute)


def failed(minute: float, *, timed_out: bool = True) -> Event:
    error = "no answer within 5s" if timed_out else "cancelled"
    data = ToolFailed(tool_call_id="c1", tool_name="prom", error=error, timed_out=timed_out,
                      duration_ms=5000)  # fmt: skip
    return event(data, minute=minute)


ASKED = event(ToolRequested(tool_call_id="c1", tool_name="prom", attempt=3))


@pytest.mark.parametrize("timed_out", [True, False])
def test_a_result_and_a_failure_of_one_call_agree_in_either_order(timed_out: bool) -> None:
    """The result stands, the failure (what the model was told) is kept beside it."""
    late_result = fold_tool_call(None, [ASKED, failed(1, timed_out=timed_out), completed(2)])
    late_failure = fold_tool_call(None, [ASKED, completed(2), failed(1, timed_out=timed_out)])
    assert late_result == late_failure
    assert (late_result.status, late_result.result, late_result.duration_ms) == (
        "completed", "[1]", 9000
    )  # fmt: skip
    assert (late_result.timed_out, late_result.error, late_result.attempt) == (
        timed_out, "no answer within 5s" if timed_out else "cancelled", 3
    )  # fmt: skip


def test_an_outcome_told_before_its_request_is_kept() -> None:
    row = fold_tool_call(None, [completed(1), ASKED])
    assert (row.status, row.result, row.attempt, row.requested_at) == (
        "completed", "[1]", 3, ASKED.occurred_at
    )  # fmt: skip


def test_an_id_asked_for_again_is_a_new_call() -> None:
    again = event(ToolRequested(tool_call_id="c1", tool_name="logs", attempt=4, turn=2), minute=3)
    row = fold_tool_call(None, [ASKED, failed(1), completed(2), again])
    assert (row.tool_name, row.attempt, row.turn, row.status) == ("logs", 4, 2, "requested")
    assert (row.result, row.timed_out, row.error, row.finished_at) == (None, False, None, None)
