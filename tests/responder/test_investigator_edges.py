"""The investigator at its edges, each once a bug a review found: call ids a model repeats, an
output retry among results kept by reference, tool errors too big for a message, an attempt
asked for while one runs, a report beside a tool call, a tool name the model made up. On a real
nats-server with real workers; only the model is faked (a FunctionModel)."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from pydantic_ai import ModelMessage, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from eventlog.envelope import new_event
from eventlog.publisher import EventPublisher
from responder.agent import build_agent
from responder.attempts import ask_for_attempt
from responder.investigator import Investigator
from responder.progress import Limits
from responder.tools import Tool, ToolContext
from tests.responder.running import Watch, anomaly, append, responder, watching
from tests.responder.test_crash import workers_durable
from tests.responder.test_investigator import Hours, asks, counted, registry_with, report


def output(info: AgentInfo, args: dict[str, Any]) -> ToolCallPart:
    return ToolCallPart(info.output_tools[0].name, args)


def attempts_concluded(watch: Watch, incident: str = "inc-1") -> list[int]:
    return sorted(e.data.attempt for e in watch.of(incident, "RootCauseConcluded"))


async def test_a_model_that_numbers_its_calls_the_same_each_turn_gets_each_call_run(
    js: JetStreamContext,
) -> None:
    """Some OpenAI-compatible servers number tool calls per response (`call_0` every turn).
    The second turn's call is a new question, but it is taken for the first one: never run,
    and answered with the first call's result."""
    seen: list[Any] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = asks(messages)
        returns = [p for m in messages for p in getattr(m, "parts", [])
                   if isinstance(p, ToolReturnPart)]  # fmt: skip
        seen.append([p.content for p in returns])
        if n < 2:
            return ModelResponse(
                parts=[ToolCallPart("one", {"hours": n + 1}, tool_call_id="call_0")]
            )
        return ModelResponse(parts=[output(info, report("call_0"))])

    hours: list[float] = []

    async def one(ctx: ToolContext, args: Hours) -> dict[str, Any]:
        hours.append(args.hours)
        return {"hours": args.hours}

    registry = registry_with(Tool(name="one", description="one", args=Hours, run=one))
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model)):
        await append(js, anomaly())
        await watch.concluded("inc-1")
    # The model asked for hours=1, then hours=2: it must be told about hours=2 at its third request.
    assert hours == [1.0, 2.0]
    assert seen[-1] == [{"hours": 1.0}, {"hours": 2.0}]


async def test_an_output_retry_in_a_step_kept_by_reference_does_not_stop_the_investigation(
    js: JetStreamContext,
) -> None:
    """A response with big tool calls and an invalid `final_result`: the next request carries
    the tool results and the output tool's own part. Past the step budget every tool-return
    part is kept by reference, the output tool's too, but it has no outcome event to be put
    back from: every later turn raises KeyError, the investigator's messages are dead-lettered,
    and the model's answer is lost (at best the wall-time timer gives a partial report)."""

    async def big(ctx: ToolContext, args: Hours) -> dict[str, Any]:
        return {"hours": args.hours, "text": "x" * 60_000}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = asks(messages)
        if n == 0:  # six results of 60 KB (past the step budget) and an output that is wrong
            calls = [ToolCallPart("big", {"hours": h}, tool_call_id=f"b{h}") for h in range(6)]
            return ModelResponse(parts=[*calls, output(info, {"not": "a report"})])
        if n == 1:
            return ModelResponse(parts=[ToolCallPart("big", {"hours": 99}, tool_call_id="b99")])
        return ModelResponse(parts=[output(info, report("b0", "b99"))])

    registry = registry_with(Tool(name="big", description="big", args=Hours, run=big))
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model)):
        await append(js, anomaly())
        [concluded] = await watch.concluded("inc-1", timeout=20)
    assert concluded.data.partial_reason is None
    assert concluded.data.report.hypotheses[0].evidence == ["b0", "b99"]


async def test_tool_errors_too_big_for_one_message_still_end_in_a_report(
    js: JetStreamContext,
) -> None:
    """A tool's error is recorded whole (results are capped at 64 KB, errors are not), and
    `finish` copies every failed call's error into the report's gaps: four 300 KB errors make
    a RootCauseConcluded past NATS's 1 MB max payload. Publishing it fails on every try, the
    wall-time conclusion too: the incident never concludes."""

    async def boom(ctx: ToolContext, args: Hours) -> dict[str, Any]:
        raise RuntimeError("upstream said: " + "e" * 300_000)

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asks(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("boom", {"hours": h}, tool_call_id=f"b{h}")
                                        for h in range(4)])  # fmt: skip
        return ModelResponse(parts=[output(info, report())])

    registry = registry_with(Tool(name="boom", description="boom", args=Hours, run=boom))
    limits = Limits(seconds=4)  # past it the wall-time timer concludes: that fails too
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model),
                                               limits=limits):  # fmt: skip
        await append(js, anomaly())
        [concluded] = await watch.concluded("inc-1", timeout=20)
    assert len(concluded.data.report.gaps) == 4


async def test_an_attempt_asked_for_while_one_runs_leaves_no_attempt_without_a_conclusion(
    js: JetStreamContext,
) -> None:
    """`vigil investigate` while attempt 1 waits for a tool: attempt 1 is concluded, partial,
    superseded by attempt 2, which runs and concludes (no row says `running` for ever)."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asks(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("one", {}, tool_call_id="c0")])
        return ModelResponse(parts=[output(info, report("c0"))])

    calls: list[str] = []
    registry = registry_with(counted("one", calls))
    await workers_durable(js)
    async with (
        watching(js) as watch,
        responder(js, registry, model=FunctionModel(model), workers=0),
    ):
        await append(js, anomaly())
        await watch.until(lambda: watch.of("inc-1", "ToolRequested"))
        await ask_for_attempt(js, "inc-1", model="m", by="alice")
        async with responder(js, registry, investigators=0, workers=1):
            await watch.concluded("inc-1")  # attempt 2's
            await watch.until(lambda: attempts_concluded(watch) == [1, 2], timeout=10)
    assert attempts_concluded(watch) == [1, 2]


async def _copy(js: JetStreamContext, watch: Watch, upto: str, into: str) -> None:
    """The incident's events up to its first `upto`, as another incident: what a replica that
    was killed right after appending it left behind."""
    events = []
    for event in watch.of("inc-1"):
        events.append(new_event(event.data, incident_id=into, source="test"))
        if event.type == upto:
            break
    await EventPublisher(js).publish_many(events)


async def test_a_response_with_an_output_and_a_tool_call_ends_the_same_after_a_crash(
    js: JetStreamContext,
) -> None:
    """A response holding a valid `final_result` and a tool call: the run takes the output
    (pydantic-ai's end_strategy `early`) and the call is never made. Rebuilt after a crash
    right after its AgentStep, the same response is the same answer: no call, no new request."""
    requests: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(asks(messages))
        call = ToolCallPart("one", {}, tool_call_id="c0")
        return ModelResponse(parts=[call, output(info, report())])

    calls: list[str] = []
    registry = registry_with(counted("one", calls))
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model)):
        await append(js, anomaly())
        [straight] = await watch.concluded("inc-1")
        assert calls == [] and len(requests) == 1
        await _copy(js, watch, "AgentStep", into="inc-2")
        replica = Investigator(js, build_agent(FunctionModel(model), registry), "builtin")
        await replica.advance("inc-2")
        [after_crash] = await watch.concluded("inc-2")
    assert calls == [] and len(requests) == 1  # the recorded answer is the answer
    assert after_crash.data.report == straight.data.report


async def test_one_tool_name_the_model_made_up_does_not_end_the_attempt(
    js: JetStreamContext,
) -> None:
    """A model that asks for a tool that does not exist (LLMs do) beside a real one: with tool
    retries at 0, pydantic-ai fails the run and the attempt ends at once, partial, the real
    call never made. After a crash at that step the same response goes on fine (the worker
    records `no tool named ...` and the model is told), so the two paths also disagree."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asks(messages) == 0:
            made_up = ToolCallPart("kubectl_logs", {"pod": "x"}, tool_call_id="k0")
            return ModelResponse(parts=[made_up, ToolCallPart("one", {}, tool_call_id="c0")])
        return ModelResponse(parts=[output(info, report("c0"))])

    calls: list[str] = []
    registry = registry_with(counted("one", calls))
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model)):
        await append(js, anomaly())
        [concluded] = await watch.concluded("inc-1")
    assert concluded.data.partial_reason is None, concluded.data.partial_reason
    assert calls == ["one"]
