"""`vigil demo`'s incident tells its investigation as the responder would: consistent facts."""

from __future__ import annotations

from pydantic_ai.messages import ModelMessagesTypeAdapter, ToolCallPart, ToolReturnPart

from eventlog.payloads import AgentStep, RootCauseConcluded, ToolCompleted, ToolRequested
from vigil.demo import demo_incident


def test_the_demo_investigation_holds_together() -> None:
    events = demo_incident()
    steps = [e.data for e in events if isinstance(e.data, AgentStep)]
    asked = [e.data for e in events if isinstance(e.data, ToolRequested)]
    results = {e.data.tool_call_id for e in events if isinstance(e.data, ToolCompleted)}
    (conclusion,) = [e.data for e in events if isinstance(e.data, RootCauseConcluded)]
    ids = [a.tool_call_id for a in asked]

    # Each step is a pydantic-ai request and response; the first asks for the tools requested,
    # the second sends their results and answers with the report.
    first, second = (
        ModelMessagesTypeAdapter.validate_python([s.request, s.response]) for s in steps
    )
    assert [p.tool_call_id for p in first[1].parts if isinstance(p, ToolCallPart)] == ids
    assert [p.tool_call_id for p in second[0].parts if isinstance(p, ToolReturnPart)] == ids
    (answer,) = second[1].parts
    assert isinstance(answer, ToolCallPart) and answer.tool_name == "final_result"
    assert answer.args == conclusion.report.model_dump(mode="json")

    assert set(ids) == results
    cited = {c for h in conclusion.report.hypotheses for c in h.evidence}
    cited |= {c for r in conclusion.report.ruled_out for c in r.evidence}
    assert cited and cited <= set(ids)
    assert conclusion.model_requests == len(steps) == 2 and conclusion.tool_calls == len(asked)
    assert conclusion.input_tokens == sum(s.input_tokens for s in steps)
    assert conclusion.output_tokens == sum(s.output_tokens for s in steps)
    assert [s.step for s in steps] == [0, 1] and all(a.attempt == 1 for a in asked)
