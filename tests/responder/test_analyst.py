"""The built-in analyst's plan and rules on tool results shaped as the tools return them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_ai import ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo
from pydantic_ai.tools import ToolDefinition

from responder.analyst import analyse
from responder.analyst.evidence import Result, gather
from responder.analyst.rules import rank

ONSET = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TRIGGER = {
    "name": "CheckoutErrors", "service": "checkout", "starts_at": ONSET.isoformat(),
    "labels": {"service": "checkout"},
    "generator_url": "http://prom:9090/graph?g0.expr=rate%28x%5B5m%5D%29",
}  # fmt: skip
NOW = (ONSET + timedelta(minutes=5)).isoformat()
ALERT = {"incident_id": "inc-1", "attempt": 1, "now": NOW, "trigger": TRIGGER}


def signal(
    before: float, after: float, *, slope: float = 0.0, slope_before: float = 0.0
) -> dict[str, Any]:
    return {"before": {"mean": before, "n": 30}, "after": {"mean": after, "n": 5},
            "trend": {"per_minute": slope, "before_per_minute": slope_before}}  # fmt: skip


HEALTHY = {"traffic": signal(100, 100), "errors": signal(0.001, 0.001),
           "latency_p99": signal(0.2, 0.2), "cpu": signal(1, 1), "memory": signal(5e8, 5e8),
           "restarts": signal(0, 0), "up": signal(1, 1)}  # fmt: skip


def signals(call: str, service: str, **changed: dict[str, Any]) -> Result:
    return Result(call, "service_signals", {"service": service}, True,
                  {"service": service, "signals": {**HEALTHY, **changed}})  # fmt: skip


def changes(*items: tuple[str, int, str]) -> Result:
    told = [{"service": s, "kind": "deploy", "description": "", "ref": ref,
             "at": (ONSET - timedelta(minutes=m)).isoformat()} for s, m, ref in items]  # fmt: skip
    return Result("c", "recent_changes", {"hours": 3}, True, {"changes": told, "total": len(told)})


def topology(service: str, *deps: str) -> Result:
    return Result("t", "service_topology", {"service": service}, True,
                  {"service": service, "depends_on": [{"name": d, "depth": 1} for d in deps],
                   "dependents": []})  # fmt: skip


def top(*results: Result) -> tuple[str, str | None, float]:
    report = rank(gather(ALERT, list(results)))
    first = report.hypotheses[0]
    return first.category, first.service, first.confidence


def test_a_deploy_just_before_the_errors_of_the_alerting_service_is_blamed() -> None:
    errors = signals("s1", "checkout", errors=signal(0.002, 0.15))
    assert top(errors, changes(("checkout", 8, "v2.14")), topology("checkout")) == (
        "deploy_or_config_change", "checkout", 0.85)  # fmt: skip


def test_an_innocent_deploy_off_the_path_is_ruled_out_and_the_failing_dependency_blamed() -> None:
    report = rank(gather(ALERT, [
        signals("s1", "checkout", errors=signal(0.002, 0.15)),
        signals("s2", "payments", errors=signal(0.001, 0.4)),
        signals("s3", "inventory"),
        changes(("search", 5, "v9")),
        topology("checkout", "payments", "inventory"),
    ]))  # fmt: skip
    first = report.hypotheses[0]
    assert (first.category, first.service) == ("dependency_failure", "payments")
    assert "s2" in first.evidence and "40.0%" in first.explanation
    ruled = {(r.category, r.service) for r in report.ruled_out}
    assert ("deploy_or_config_change", "search") in ruled
    assert ("dependency_failure", "inventory") in ruled


def test_memory_climbing_since_before_the_onset_is_a_leak_even_with_a_deploy_after_it_began() -> (
    None
):
    leak = signal(5e8, 7e8, slope=2e6, slope_before=2e6)  # +24% an hour
    state = signals("s1", "checkout", memory=leak, restarts=signal(0, 2),
                    errors=signal(0.001, 0.05))  # fmt: skip
    category, service, confidence = top(
        state, changes(("checkout", 20, "v3")), topology("checkout")
    )
    assert (category, service, confidence) == ("memory_leak", "checkout", 0.85)


def test_a_surge_of_traffic_is_told_apart_from_saturation() -> None:
    surge = signals("s1", "checkout", traffic=signal(100, 250), latency_p99=signal(0.2, 0.9))
    assert top(surge, topology("checkout"))[:2] == ("traffic_surge", "checkout")
    hot = signals("s1", "checkout", cpu=signal(1, 2.5), latency_p99=signal(0.2, 0.9))
    assert top(hot, topology("checkout"))[:2] == ("resource_saturation", "checkout")


def test_scrape_targets_gone_with_no_change_is_the_node() -> None:
    down = signals("s1", "checkout", up=signal(1, 0.4), errors=signal(0.001, 0.2))
    assert top(down, topology("checkout"))[:2] == ("infrastructure_node", "checkout")


def test_errors_with_nothing_to_explain_them_are_a_regression_and_flat_signals_are_unknown() -> (
    None
):
    errors = signals("s1", "checkout", errors=signal(0.002, 0.08))
    assert top(errors, topology("checkout"))[:2] == ("error_rate_regression", "checkout")
    assert top(signals("s1", "checkout"), topology("checkout"))[0] == "unknown"


def test_failed_tools_are_gaps_and_no_evidence_is_an_honest_unknown() -> None:
    failed = Result("s1", "service_signals", {"service": "checkout"}, False, "no Prometheus")
    report = rank(gather(ALERT, [failed]))
    assert report.hypotheses[0].category == "unknown"
    assert report.gaps == ["service_signals (s1): no Prometheus"]


def info(*names: str) -> AgentInfo:
    tools = [ToolDefinition(name=n, description=n) for n in names]
    return AgentInfo(function_tools=tools, allow_text_output=False, output_tools=[
        ToolDefinition(name="final_result", description="report")], model_settings=None,
        model_request_parameters=None, instructions=None)  # type: ignore[arg-type]  # fmt: skip


def test_the_plan_asks_wide_first_then_downstream_then_answers() -> None:
    offered = info("recent_changes", "related_alerts", "service_signals", "service_topology",
                   "similar_incidents", "prometheus_range")  # fmt: skip
    prompt = ModelRequest.user_text_prompt(
        "x <alert_data>\n" + __import__("orjson").dumps(ALERT).decode() + "\n</alert_data>"
    )
    first = analyse([prompt], offered)
    asked = {p.tool_name: p.args for p in first.parts if isinstance(p, ToolCallPart)}
    assert asked["service_signals"] == {"service": "checkout"}
    assert asked["prometheus_range"] == {"query": "rate(x[5m])"}
    assert set(asked) == {"recent_changes", "related_alerts", "service_signals",
                          "service_topology", "similar_incidents", "prometheus_range"}  # fmt: skip
    ids = {p.tool_name: p.tool_call_id for p in first.parts if isinstance(p, ToolCallPart)}
    answers = ModelRequest(parts=[ToolReturnPart(n, topology("checkout", "db").content if
                                                 n == "service_topology" else {}, tool_call_id=i)
                                  for n, i in ids.items()])  # fmt: skip
    second = analyse([prompt, first, answers], offered)
    assert [(p.tool_name, p.args) for p in second.parts] == [("service_signals", {"service": "db"})]
    third = analyse([prompt, first, answers, second, ModelRequest(parts=[
        ToolReturnPart("service_signals", {}, tool_call_id=second.parts[0].tool_call_id)])],
        offered)  # fmt: skip
    assert [p.tool_name for p in third.parts] == ["final_result"]
    assert isinstance(third, ModelResponse)
