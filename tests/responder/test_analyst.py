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


def topology(service: str, *deps: str, below: dict[str, list[str]] | None = None) -> Result:
    """`service` calls `deps`; `below`: what each of those calls (two hops down)."""
    far = [{"name": d, "depth": 2, "via": [n]} for n, ds in (below or {}).items() for d in ds]
    return Result("t", "service_topology", {"service": service}, True,
                  {"service": service, "dependents": [],
                   "depends_on": [{"name": d, "depth": 1, "via": [service]} for d in deps] + far,
                   })  # fmt: skip


def alerting(*pairs: tuple[str, str]) -> Result:
    """related_alerts' answer: (service, alert name) firing."""
    groups = [{"service": s, "alerts": [{"name": n}]} for s, n in pairs]
    return Result("a", "related_alerts", {}, True, {"groups": groups, "total": len(groups)})


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


def test_the_failure_two_hops_down_is_blamed_not_the_service_between() -> None:
    """frontend -> checkout -> payments: payments' deploy broke it; checkout only passes its
    errors on, and inventory, healthy, cuts search's deploy off from the frontend."""
    report = rank(gather(ALERT | {"trigger": TRIGGER | {"service": "frontend"}}, [
        signals("s0", "frontend", errors=signal(0.001, 0.1)),
        signals("s1", "checkout", errors=signal(0.001, 0.12)),
        signals("s2", "payments", errors=signal(0.001, 0.3)),
        signals("s3", "inventory"),
        signals("s4", "search", latency_p99=signal(0.1, 0.9)),
        changes(("payments", 6, "v7"), ("search", 4, "v2")),
        topology("frontend", "checkout", "inventory",
                 below={"checkout": ["payments"], "inventory": ["search"]}),
    ]))  # fmt: skip
    ranked = [(h.category, h.service) for h in report.hypotheses]
    assert ranked[0] == ("deploy_or_config_change", "payments")
    assert ranked.index(("dependency_failure", "payments")) < ranked.index(
        ("dependency_failure", "checkout")
    )
    (search,) = [r for r in report.ruled_out if r.service == "search"]
    assert search.reason == "inventory, between it and frontend, is healthy"


def test_a_dependency_overloaded_by_its_callers_is_not_the_cause() -> None:
    """checkout's flag makes it hammer redis: redis alerts first, but it is asked three times
    as much; the flag is the cause."""
    flag = Result("c", "recent_changes", {}, True, {"changes": [
        {"service": "checkout", "kind": "feature_flag", "description": "cache per request",
         "ref": "cache=off", "at": (ONSET - timedelta(minutes=12)).isoformat()}]})  # fmt: skip
    report = rank(gather(ALERT, [
        signals("s1", "checkout", errors=signal(0.002, 0.09)),
        signals("s2", "redis", traffic=signal(2000, 6000), latency_p99=signal(0.002, 0.05)),
        flag, alerting(("redis", "RedisLatencyHigh")), topology("checkout", "redis"),
    ]))  # fmt: skip
    first, second = report.hypotheses[:2]
    assert (first.category, first.service) == ("deploy_or_config_change", "checkout")
    assert (second.category, second.service) == ("dependency_failure", "redis")
    assert "x3.0 as much as before" in second.explanation and second.confidence < 0.6


def test_why_a_dependency_fails_ranks_above_its_failure() -> None:
    leak = signal(5e8, 8e8, slope=3e6, slope_before=3e6)
    report = rank(gather(ALERT, [
        signals("s1", "checkout", errors=signal(0.002, 0.09)),
        signals("s2", "inventory", memory=leak, errors=signal(0.001, 0.2)),
        topology("checkout", "inventory"),
    ]))  # fmt: skip
    assert [(h.category, h.service) for h in report.hypotheses[:2]] == [
        ("memory_leak", "inventory"), ("dependency_failure", "inventory")
    ]  # fmt: skip


def test_the_onset_is_when_the_rules_condition_began_to_hold() -> None:
    alert = ALERT | {"trigger": TRIGGER | {"origin": "alertmanager"}}
    held = ONSET - timedelta(minutes=3, seconds=12)
    rule = Result("r", "prometheus_range", {"query": "rate(x[5m])"}, True, {"series": [
        {"labels": {}, "since": (ONSET - timedelta(minutes=50)).isoformat()},
        {"labels": {}, "since": held.isoformat()},
        {"labels": {}, "since": (ONSET + timedelta(minutes=1)).isoformat()},  # after: not it
    ]})  # fmt: skip
    assert gather(alert, [rule]).onset == held
    other = Result("r", "prometheus_range", {"query": "up"}, True, rule.content)
    assert gather(alert, [other]).onset == ONSET - timedelta(minutes=5)  # the guess
    detector = ALERT | {"trigger": TRIGGER | {"origin": "detector"}}
    assert gather(detector, [other]).onset == ONSET


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


def test_the_plan_asks_wide_first_then_signals_around_the_onset_then_answers() -> None:
    offered = info("recent_changes", "related_alerts", "service_signals", "service_topology",
                   "similar_incidents", "prometheus_range")  # fmt: skip
    prompt = ModelRequest.user_text_prompt(
        "x <alert_data>\n" + __import__("orjson").dumps(ALERT).decode() + "\n</alert_data>"
    )
    first = analyse([prompt], offered)
    asked = {p.tool_name: p.args for p in first.parts if isinstance(p, ToolCallPart)}
    assert asked["prometheus_range"] == {"query": "rate(x[5m])"}
    assert set(asked) == {"recent_changes", "related_alerts", "service_topology",
                          "similar_incidents", "prometheus_range"}  # fmt: skip
    ids = {p.tool_name: p.tool_call_id for p in first.parts if isinstance(p, ToolCallPart)}
    held = (ONSET - timedelta(minutes=4)).isoformat()
    content = {
        "service_topology": topology("checkout", "db", below={"db": ["disk"]}).content,
        "prometheus_range": {"series": [{"labels": {}, "since": held}]},
    }
    answers = ModelRequest(parts=[ToolReturnPart(n, content.get(n, {}), tool_call_id=i)
                                  for n, i in ids.items()])  # fmt: skip
    second = analyse([prompt, first, answers], offered)
    assert [(p.tool_name, p.args) for p in second.parts] == [
        ("service_signals", {"service": s, "onset": held}) for s in ("checkout", "db", "disk")
    ]
    third = analyse([prompt, first, answers, second, ModelRequest(parts=[
        ToolReturnPart("service_signals", {}, tool_call_id=p.tool_call_id)
        for p in second.parts])], offered)  # fmt: skip
    assert [p.tool_name for p in third.parts] == ["final_result"]
    assert isinstance(third, ModelResponse)
