"""The investigator on a real nats-server with real workers: an anomaly becomes one report,
the conversation is rebuilt from events, tools that never answer time out, the same call is
reused, limits give partial reports, replicas keep one story."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from nats.js import JetStreamContext
from pydantic import BaseModel
from pydantic_ai import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
    TextPart,
    ToolCallPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from eventlog.payloads import (
    AgentStep,
    ChangeRecorded,
    RootCauseConcluded,
    ToolFailed,
    ToolRequested,
)
from responder.agent import build_agent
from responder.attempts import ask_for_attempt
from responder.investigator import Investigator
from responder.progress import Limits
from responder.tools import Tool, ToolContext, ToolRegistry, ToolSettings, default_tools
from responder.worker import run_workers
from tests.detector.prometheus_server import PrometheusServer
from tests.responder import golden
from tests.responder.running import anomaly, append, responder, watching


class Nothing(BaseModel):
    pass


class Hours(BaseModel):
    hours: float = 1.0


def report(*evidence: str, category: str = "unknown") -> dict[str, Any]:
    return {"summary": "s", "hypotheses": [{"category": category, "service": "checkout",
            "confidence": 0.4, "explanation": "e", "evidence": list(evidence)}]}  # fmt: skip


def asks(messages: list[ModelMessage]) -> int:
    return sum(1 for m in messages if isinstance(m, ModelResponse))


def registry_with(*tools: Tool[Any]) -> ToolRegistry:
    registry = ToolRegistry()
    for tool in tools:
        registry.register(tool)
    return registry


def counted(name: str, calls: list[str], *, gate: asyncio.Event | None = None) -> Tool[Hours]:
    async def run(ctx: ToolContext, args: Hours) -> dict[str, Any]:
        calls.append(name)
        if gate is not None:
            await gate.wait()
        return {"tool": name, "hours": args.hours}

    return Tool(name=name, description=f"the {name} tool", args=Hours, run=run)


async def test_an_anomaly_is_investigated_against_a_real_prometheus_to_one_report_citing_it(
    js: JetStreamContext, golden_prometheus: PrometheusServer
) -> None:
    onset, now = golden.minute(golden.ONSET), golden.minute(golden.NOW)
    tools = ToolSettings(prometheus_url=golden_prometheus.url)
    async with watching(js) as watch, responder(js, default_tools(), settings=tools,
                                               now_of=lambda trigger: now):  # fmt: skip
        deploy = ChangeRecorded(service="checkout", changed_at=onset - timedelta(minutes=10),
                                ref="v2.14")  # fmt: skip
        await append(js, deploy, incident="changes")
        await append(js, anomaly(starts_at=onset))
        [concluded] = await watch.concluded("inc-1")
        await append(js, anomaly(fingerprint="f2", name="HighLatency"))  # joins: no new attempt
        await append(js, anomaly(fingerprint="f3", name="Third"))
        await watch.until(lambda: len(watch.of("inc-1", "AnomalyDetected")) == 3)
        await append(js, anomaly(), incident="inc-2")  # the next incident: its events came after
        await watch.concluded("inc-2")
    assert len(watch.of("inc-1", "InvestigationStarted")) == 1
    assert len(watch.of("inc-1", "RootCauseConcluded")) == 1
    result = concluded.data
    assert isinstance(result, RootCauseConcluded)
    asked = {e.data.tool_call_id: e.data for e in watch.of("inc-1", "ToolRequested")}
    planned = {"recent_changes", "related_alerts", "service_signals", "service_topology",
               "similar_incidents"}  # fmt: skip
    assert {a.tool_name for a in asked.values()} == planned
    assert all(a.now == now and a.onset == onset for a in asked.values())
    # Memory climbing a MiB a minute since long before the onset: a leak, not the deploy.
    ranked = [(h.category, h.service) for h in result.report.hypotheses]
    assert ranked[0] == ("memory_leak", "checkout")
    assert ("deploy_or_config_change", "checkout") in ranked
    top = result.report.hypotheses[0]
    signals = [i for i, a in asked.items() if a.tool_name == "service_signals"]
    assert top.evidence == signals and "an hour" in top.explanation
    for hypothesis in result.report.hypotheses:
        assert set(hypothesis.evidence) <= set(asked)
    gaps = result.report.gaps  # no topology file, no read model: told once each
    assert len(gaps) == 2 and "VIGIL_TOPOLOGY" in gaps[0] and "vigil.sql.read" in gaps[1]
    steps = [e.data for e in watch.of("inc-1", "AgentStep")]  # wide; the signals; the answer
    assert [(s.step, s.turn) for s in steps] == [(0, 0), (1, 1), (2, 2)]
    assert result.model_requests == 3 and result.tool_calls == len(asked)
    outcomes = watch.of("inc-1", "ToolCompleted", "ToolFailed")
    assert sorted(o.data.tool_call_id for o in outcomes) == sorted(asked)


async def test_the_conversation_is_rebuilt_from_events_as_the_model_saw_it(
    js: JetStreamContext,
) -> None:
    seen: list[list[ModelMessage]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(messages))
        n = asks(messages)
        if n < 2:
            one = ToolCallPart("one", {"hours": n}, tool_call_id=f"o{n}")
            two = ToolCallPart("two", {"hours": n + 5}, tool_call_id=f"t{n}")
            return ModelResponse(parts=[TextPart(f"turn {n}"), one, two])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report("o0", "t1"))])

    calls: list[str] = []
    registry = registry_with(counted("one", calls), counted("two", calls))
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model)):
        await append(js, anomaly())
        await watch.concluded("inc-1")
    steps = [e.data for e in watch.of("inc-1", "AgentStep")]
    assert len(steps) == len(seen) == 3
    for i, step in enumerate(steps):
        assert isinstance(step, AgentStep)
        rebuilt = [m for s in steps[:i] for m in (s.request, s.response)] + [step.request]
        assert _parts(ModelMessagesTypeAdapter.validate_python(rebuilt)) == _parts(seen[i])
    assert sorted(calls) == ["one", "one", "two", "two"]


def _parts(messages: list[ModelMessage]) -> list[Any]:
    dumped = ModelMessagesTypeAdapter.dump_python(messages, mode="json")
    drop = {"timestamp", "run_id", "conversation_id", "model_id"}
    return [[{k: v for k, v in p.items() if k not in drop} for p in m["parts"]] for m in dumped]


async def test_a_tool_with_no_answer_times_out_the_attempt_goes_on_and_a_late_result_is_kept(
    js: JetStreamContext,
) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asks(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("slow", {}, tool_call_id="s1")])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report("s1"))])

    calls: list[str] = []
    registry = registry_with(counted("slow", calls))
    # The workers' durable exists, but no worker runs while the attempt waits.
    stop, ready = asyncio.Event(), asyncio.Event()
    stop.set()
    await run_workers(js, registry, stop, nc=js._nc, settings=ToolSettings(), ready=ready)
    limits = Limits(tool_timeout_seconds=0.5)
    async with watching(js) as watch:
        async with responder(js, registry, model=FunctionModel(model), limits=limits, workers=0):
            await append(js, anomaly())
            [concluded] = await watch.concluded("inc-1")
        async with responder(js, registry, workers=1, investigators=0):
            await watch.until(lambda: watch.of("inc-1", "ToolCompleted"))
    [failed] = [e.data for e in watch.of("inc-1", "ToolFailed")]
    assert isinstance(failed, ToolFailed) and failed.timed_out and failed.tool_call_id == "s1"
    report_ = concluded.data.report
    assert not report_.partial and any("s1" in gap and "timed out" in gap for gap in report_.gaps)
    [late] = [e.data for e in watch.of("inc-1", "ToolCompleted")]
    assert late.tool_call_id == "s1" and calls == ["slow"]


async def test_the_same_call_again_reuses_its_recorded_result(js: JetStreamContext) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = asks(messages)
        if n < 2:  # an agent in a loop: the same question twice
            return ModelResponse(parts=[ToolCallPart("one", {"hours": 2}, tool_call_id=f"c{n}")])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report("c1"))])

    calls: list[str] = []
    async with watching(js) as watch, responder(js, registry_with(counted("one", calls)),
                                               model=FunctionModel(model)):  # fmt: skip
        await append(js, anomaly())
        await watch.concluded("inc-1")
    outcomes = {e.data.tool_call_id: e.data for e in watch.of("inc-1", "ToolCompleted")}
    assert calls == ["one"]
    assert outcomes["c1"].reused_from == "c0" and outcomes["c1"].result == outcomes["c0"].result
    assert [e.data.tool_call_id for e in watch.of("inc-1", "ToolRequested")] == ["c0"]


async def test_a_model_in_a_loop_hits_its_request_limit_and_a_partial_report_says_so(
    js: JetStreamContext,
) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = asks(messages)
        return ModelResponse(parts=[ToolCallPart("one", {"hours": n}, tool_call_id=f"c{n}")])

    calls: list[str] = []
    limits = Limits(model_requests=3)
    registry = registry_with(counted("one", calls))
    async with (
        watching(js) as watch,
        responder(js, registry, model=FunctionModel(model), limits=limits),
    ):
        await append(js, anomaly())
        [concluded] = await watch.concluded("inc-1")
    result = concluded.data
    assert result.report.partial and "request_limit of 3" in (result.partial_reason or "")
    assert result.model_requests == 3 and len(calls) == 3
    assert result.report.hypotheses  # what is known, never silence


async def test_a_model_that_answers_garbage_ends_in_a_partial_report_not_a_stuck_incident(
    js: JetStreamContext,
) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("I think it is DNS. It is always DNS.")])

    async with watching(js) as watch, responder(js, registry_with(), model=FunctionModel(model)):
        await append(js, anomaly())
        [concluded] = await watch.concluded("inc-1")
    result = concluded.data
    assert result.report.partial and "the model failed" in (result.partial_reason or "")
    assert result.report.hypotheses[0].category == "unknown"


async def test_evidence_that_names_no_recorded_call_is_sent_back_to_the_model(
    js: JetStreamContext,
) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = asks(messages)
        if n == 0:
            return ModelResponse(parts=[ToolCallPart("one", {}, tool_call_id="c0")])
        cited = "made-up" if n == 1 else "c0"
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report(cited))])

    async with watching(js) as watch, responder(js, registry_with(counted("one", [])),
                                               model=FunctionModel(model)):  # fmt: skip
        await append(js, anomaly())
        [concluded] = await watch.concluded("inc-1")
    assert concluded.data.report.hypotheses[0].evidence == ["c0"]
    retry = watch.of("inc-1", "AgentStep")[-1].data.request
    assert "made-up" in str(retry)


async def test_two_investigators_and_two_workers_split_incidents_and_none_is_done_twice(
    js: JetStreamContext,
) -> None:
    incidents = [f"inc-{i}" for i in range(12)]
    async with watching(js) as watch, responder(js, default_tools(), investigators=2,
                                               workers=2) as pair:  # fmt: skip
        for incident in incidents:
            await append(js, anomaly(), incident=incident)
        for incident in incidents:
            await watch.concluded(incident)
    for incident in incidents:
        assert len(watch.of(incident, "InvestigationStarted")) == 1
        assert len(watch.of(incident, "RootCauseConcluded")) == 1
        steps = [e.data.step for e in watch.of(incident, "AgentStep")]
        assert steps == list(range(len(steps)))
        asked = [e.data.tool_call_id for e in watch.of(incident, "ToolRequested")]
        done = [e.data.tool_call_id for e in watch.of(incident, "ToolCompleted", "ToolFailed")]
        assert sorted(asked) == sorted(set(asked)) == sorted(done)
    assert all(i.turns_taken > 0 for i in pair), [i.turns_taken for i in pair]


async def test_replicas_that_take_the_same_turn_at_once_record_one_story(
    js: JetStreamContext,
) -> None:
    both_in = asyncio.Barrier(2)

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asks(messages) == 0:
            await both_in.wait()  # both replicas are inside the same model request
            return ModelResponse(parts=[ToolCallPart("one", {}, tool_call_id=f"c{id(info)}")])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report())])

    registry = registry_with(counted("one", []))
    replicas = [
        Investigator(js, build_agent(FunctionModel(model), registry), "m") for _ in range(2)
    ]
    async with watching(js) as watch:
        await append(js, anomaly())
        await asyncio.gather(*(r.advance("inc-1") for r in replicas))
        await watch.until(lambda: watch.of("inc-1", "ToolRequested"))
    steps = watch.of("inc-1", "AgentStep")
    assert [e.data.step for e in steps] == [0]
    [asked] = [e.data for e in watch.of("inc-1", "ToolRequested")]
    recorded = steps[0].data.response["parts"][0]["tool_call_id"]
    assert isinstance(asked, ToolRequested) and asked.tool_call_id == recorded
    assert len(watch.of("inc-1", "InvestigationStarted")) == 1


async def test_investigate_opens_a_new_attempt_that_concludes_again(js: JetStreamContext) -> None:
    async with watching(js) as watch, responder(js, default_tools()):
        await append(js, anomaly())
        await watch.concluded("inc-1")
        started = await ask_for_attempt(js, "inc-1", model="builtin", by="alice")
        concluded = await watch.concluded("inc-1", count=2)
    assert started.attempt == 2 and started.requested_by == "alice"
    assert [c.data.attempt for c in concluded] == [1, 2]
    assert [e.data.attempt for e in watch.of("inc-1", "InvestigationStarted")] == [1, 2]


async def test_tool_results_too_big_for_one_step_are_kept_by_reference_and_put_back(
    js: JetStreamContext,
) -> None:
    seen: list[list[ModelMessage]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(messages))
        if asks(messages) == 0:  # six results of 60 KB: past what one step may carry
            return ModelResponse(parts=[ToolCallPart("big", {"hours": h}, tool_call_id=f"b{h}")
                                        for h in range(6)])  # fmt: skip
        if asks(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("big", {"hours": 99}, tool_call_id="b99")])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report("b0"))])

    async def big(ctx: ToolContext, args: Hours) -> dict[str, Any]:
        return {"hours": args.hours, "text": "x" * 60_000}

    registry = registry_with(Tool(name="big", description="big", args=Hours, run=big))
    async with watching(js) as watch, responder(js, registry, model=FunctionModel(model)):
        await append(js, anomaly())
        await watch.concluded("inc-1")
    steps = [e.data for e in watch.of("inc-1", "AgentStep")]
    second = steps[1].request["parts"]
    assert all(p["content"] is None and p["metadata"] for p in second)  # by reference
    # What the model was sent at its third request was put back whole from the outcomes.
    returns = [p for m in seen[2] for p in getattr(m, "parts", []) if p.part_kind == "tool-return"]
    assert [len(p.content["text"]) for p in returns] == [60_000] * 7


async def test_two_asks_at_once_open_one_attempt(js: JetStreamContext) -> None:
    async with watching(js) as watch:
        await append(js, anomaly())
        asks = [ask_for_attempt(js, "inc-1", model="builtin", by=who) for who in ("ann", "bob")]
        first, second = await asyncio.gather(*asks)
        await watch.until(lambda: watch.of("inc-1", "InvestigationStarted"))
        again = await ask_for_attempt(js, "inc-1", model="builtin", by="cy")
    assert first == second and first.attempt == 1
    assert again.attempt == 2 and again.requested_by == "cy"
    started = [e.data.attempt for e in watch.of("inc-1", "InvestigationStarted")]
    assert started[:1] == [1] and started.count(1) == 1
