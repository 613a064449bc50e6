"""The built-in analyst: a deterministic pydantic-ai `FunctionModel` that investigates offline.

It plans tools from the alert so they run in parallel. Turn 1: the service's topology, recent
changes, related alerts, similar incidents, and the range of the alert rule's own PromQL when
its generator URL carries it (when the condition began to hold is the onset). Turn 2: the
golden signals of the alerting service and of what it calls, one and two hops down, around
that onset. Then it ranks hypotheses with documented rules (`responder.analyst.rules`). The
agent code does not know it is not an LLM.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from eventlog.payloads.investigation import RootCauseReport
from responder.agent import alert_data, prompt
from responder.analyst.evidence import Result, gather, rule_expr
from responder.analyst.rules import rank
from responder.progress import Attempt, Investigation, calls_in

MODEL_NAME = "builtin"
MAX_DEPENDENCIES = 8


def builtin_model() -> FunctionModel:
    return FunctionModel(analyse, model_name=MODEL_NAME)


def analyse(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    alert = alert_data(messages)
    made = _calls(messages)
    results = _results(messages, made)
    turns = sum(1 for m in messages if isinstance(m, ModelResponse) and _asks_tools(m))
    wanted: list[tuple[str, dict[str, Any]]] = []
    if turns == 0:
        wanted = _first_turn(alert)
    elif turns == 1:
        wanted = _signals(alert, results, made)
    offered = {t.name for t in info.function_tools}
    wanted = [(name, args) for name, args in wanted if name in offered]
    if wanted:
        prefix = f"a{alert.get('attempt', 1)}.t{turns}"
        return ModelResponse(
            parts=[
                ToolCallPart(name, args, tool_call_id=f"{prefix}.{i}.{name}")
                for i, (name, args) in enumerate(wanted)
            ]
        )
    report = rank(gather(alert, results))
    output = info.output_tools[0].name
    return ModelResponse(parts=[ToolCallPart(output, report.model_dump(mode="json"))])


def rank_recorded(inv: Investigation, attempt: Attempt) -> RootCauseReport:
    """The ranking of what an attempt recorded so far (for a partial report, any model)."""
    assert inv.trigger is not None
    now = attempt.started.now or attempt.started_at
    text = prompt(inv.trigger, inv.anomalies, now, attempt=attempt.number)
    alert = alert_data([ModelRequest.user_text_prompt(text)])
    results = []
    for step in attempt.steps:
        for call in calls_in(step):
            outcome = attempt.outcomes.get(call.tool_call_id)
            if outcome is None:
                continue
            ok = hasattr(outcome, "result")
            content = getattr(outcome, "result", None) if ok else getattr(outcome, "error", "")
            results.append(Result(call.tool_call_id, call.tool_name, call.args, ok, content))
    return rank(gather(alert, results))


def _asks_tools(response: ModelResponse) -> bool:
    return any(
        isinstance(p, ToolCallPart) and not p.tool_name.startswith("final_result")
        for p in response.parts
    )


def _calls(messages: list[ModelMessage]) -> dict[str, ToolCallPart]:
    return {
        p.tool_call_id: p
        for m in messages
        if isinstance(m, ModelResponse)
        for p in m.parts
        if isinstance(p, ToolCallPart)
    }


def _results(messages: list[ModelMessage], made: dict[str, ToolCallPart]) -> list[Result]:
    found = []
    for m in messages:
        if not isinstance(m, ModelRequest):
            continue
        for p in m.parts:
            if isinstance(p, ToolReturnPart) and p.tool_call_id in made:
                call = made[p.tool_call_id]
                ok = p.outcome == "success"
                args = call.args_as_dict()
                found.append(Result(p.tool_call_id, call.tool_name, args, ok, p.content))
    return found


def _first_turn(alert: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    trigger = alert.get("trigger", {})
    service = trigger.get("service") or (trigger.get("labels") or {}).get("service")
    name = trigger.get("name")
    wanted: list[tuple[str, dict[str, Any]]] = [
        ("recent_changes", {"hours": 3}),
        ("related_alerts", {}),
    ]
    if service:
        wanted += [
            ("service_topology", {"service": service}),
            ("similar_incidents", {"service": service, "alert": name}),
        ]
    elif name:
        wanted.append(("similar_incidents", {"alert": name}))
    expr = rule_expr(trigger.get("generator_url"))
    if expr:
        wanted.append(("prometheus_range", {"query": expr}))
    return wanted


def _signals(
    alert: dict[str, Any], results: list[Result], made: dict[str, ToolCallPart]
) -> list[tuple[str, dict[str, Any]]]:
    """The golden signals of the alerting service and of up to MAX_DEPENDENCIES services it
    calls (one hop, then two), around the onset the first turn tells."""
    evidence = gather(alert, results)
    onset = evidence.onset
    checked = {
        p.args_as_dict().get("service") for p in made.values() if p.tool_name == "service_signals"
    }
    services = [s for s in evidence.path()[: MAX_DEPENDENCIES + 1] if s not in checked]
    args = {"onset": onset.isoformat()} if onset else {}
    return [("service_signals", {"service": s, **args}) for s in services]
