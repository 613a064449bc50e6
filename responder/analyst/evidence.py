"""What the built-in analyst reads: the tool calls of an attempt and their results, as facts.

Tool results are plain JSON (see docs/tools.md for their shapes); this module turns them into
small typed views, so the rules read `signals["checkout"].errors.after` rather than dicts.
A result that is missing, failed or shaped unexpectedly is simply no evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

# Prometheus fires an alert once its condition has held for the rule's `for:`, commonly a few
# minutes: without the rule's PromQL to tell when it began to hold, the onset is guessed this
# much before an Alertmanager alert's start. The detector's own anomalies start at their onset.
PENDING_GUESS = timedelta(minutes=5)


@dataclass(frozen=True)
class Result:
    tool_call_id: str
    tool_name: str
    args: dict[str, Any]
    ok: bool
    content: Any


@dataclass(frozen=True)
class Signal:
    """One golden signal of a service: means before and after the onset, and its trend."""

    name: str
    before: float | None
    after: float | None
    slope_before: float | None  # per minute, least squares over the time before the onset
    slope: float | None  # per minute, over the whole window
    call: str

    @property
    def ratio(self) -> float | None:
        """after / before (None when either is unknown; a large number from a zero base)."""
        if self.before is None or self.after is None:
            return None
        if self.before == 0:
            return None if self.after == 0 else 1e6
        return self.after / self.before


@dataclass(frozen=True)
class Change:
    service: str
    kind: str
    description: str
    at: datetime
    ref: str | None
    call: str


@dataclass
class Evidence:
    alert: dict[str, Any]
    results: list[Result]
    signals: dict[str, dict[str, Signal]] = field(default_factory=dict)  # service -> name ->
    changes: list[Change] = field(default_factory=list)
    # service -> what it calls, as far as the topology was told (two hops from the alerting one)
    depends_on: dict[str, list[str]] = field(default_factory=dict)
    topology_calls: dict[str, str] = field(default_factory=dict)  # service -> call id
    # service -> (alert name, call id)
    alerting: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    similar: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    condition_since: datetime | None = None  # when the alert rule's condition began to hold

    @property
    def service(self) -> str | None:
        trigger = self.alert.get("trigger", {})
        labels = trigger.get("labels") or {}
        return trigger.get("service") or labels.get("service") or labels.get("job")

    @property
    def starts_at(self) -> datetime | None:
        raw = self.alert.get("trigger", {}).get("starts_at")
        return datetime.fromisoformat(raw) if raw else None

    @property
    def onset(self) -> datetime | None:
        """When the trouble began: when the alert rule's condition began to hold (its PromQL
        from the generator URL, asked for over the time before the alert), else the alert's
        start less PENDING_GUESS (an Alertmanager alert), else its start."""
        starts = self.starts_at
        if starts is None:
            return None
        if self.condition_since is not None and self.condition_since <= starts:
            return self.condition_since
        if self.alert.get("trigger", {}).get("origin") == "alertmanager":
            return starts - PENDING_GUESS
        return starts

    @property
    def expr(self) -> str | None:
        return rule_expr(self.alert.get("trigger", {}).get("generator_url"))

    def path(self) -> list[str]:
        """The alerting service and what it calls, one and two hops down, nearest first."""
        service = self.service
        if service is None:
            return []
        near = self.depends_on.get(service, [])
        far = [d for n in near for d in self.depends_on.get(n, [])]
        return list(dict.fromkeys([service, *near, *far]))

    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]


def gather(alert: dict[str, Any], results: list[Result]) -> Evidence:
    evidence = Evidence(alert=alert, results=results)
    for result in results:
        if not result.ok or not isinstance(result.content, dict):
            continue
        reader = _READERS.get(result.tool_name)
        if reader is not None:
            try:
                reader(evidence, result)
            except (KeyError, TypeError, ValueError):
                continue  # a shape we do not know is no evidence, not a crash
    return evidence


def _signals(evidence: Evidence, result: Result) -> None:
    content = result.content
    service = content.get("service") or result.args.get("service")
    found = evidence.signals.setdefault(service, {})
    for name, raw in (content.get("signals") or {}).items():
        if not isinstance(raw, dict) or raw.get("no_data") or raw.get("error"):
            continue
        trend = raw.get("trend") or {}
        found[name] = Signal(
            name=name,
            before=_mean(raw.get("before")),
            after=_mean(raw.get("after")),
            slope_before=trend.get("before_per_minute"),
            slope=trend.get("per_minute"),
            call=result.tool_call_id,
        )


def _mean(stats: Any) -> float | None:
    return stats.get("mean") if isinstance(stats, dict) else None


def _changes(evidence: Evidence, result: Result) -> None:
    for raw in result.content.get("changes", []):
        evidence.changes.append(
            Change(
                service=raw["service"],
                kind=raw.get("kind", "deploy"),
                description=raw.get("description", ""),
                at=datetime.fromisoformat(raw["at"]),
                ref=raw.get("ref"),
                call=result.tool_call_id,
            )
        )


def rule_expr(generator_url: str | None) -> str | None:
    """The rule's PromQL from a Prometheus generator URL (`/graph?g0.expr=...`)."""
    if not generator_url:
        return None
    values = parse_qs(urlparse(generator_url).query).get("g0.expr")
    return values[0] if values else None


def _topology(evidence: Evidence, result: Result) -> None:
    content = result.content
    service = content.get("service") or result.args.get("service")
    nodes = content.get("depends_on", [])
    evidence.depends_on[service] = [d["name"] for d in nodes if d.get("depth", 1) == 1]
    for node in nodes:  # two hops down: under each service that leads to it
        if node.get("depth") == 2:
            for parent in node.get("via") or []:
                evidence.depends_on.setdefault(parent, []).append(node["name"])
    evidence.topology_calls[service] = result.tool_call_id
    for node in [*content.get("depends_on", []), *content.get("dependents", [])]:
        for alert in node.get("alerting", []) or []:
            name = alert.get("name", "?") if isinstance(alert, dict) else str(alert)
            evidence.alerting.setdefault(node["name"], []).append((name, result.tool_call_id))


def _alerts(evidence: Evidence, result: Result) -> None:
    for group in result.content.get("groups", []):
        service = group.get("service")
        for alert in group.get("alerts", []):
            if service:
                pair = (alert.get("name", "?"), result.tool_call_id)
                evidence.alerting.setdefault(service, []).append(pair)


def _condition(evidence: Evidence, result: Result) -> None:
    """The range of the alert rule's own PromQL: the latest start of a run of it holding, up
    to the alert's start."""
    if result.args.get("query") != evidence.expr or evidence.starts_at is None:
        return
    starts = evidence.starts_at
    runs = [datetime.fromisoformat(s["since"]) for s in result.content.get("series", [])
            if s.get("since")]  # fmt: skip
    runs = [r for r in runs if r <= starts]
    if runs:
        evidence.condition_since = max(runs)


def _similar(evidence: Evidence, result: Result) -> None:
    for incident in result.content.get("incidents", []):
        evidence.similar.append((incident, result.tool_call_id))


_READERS = {
    "service_signals": _signals,
    "recent_changes": _changes,
    "service_topology": _topology,
    "related_alerts": _alerts,
    "similar_incidents": _similar,
    "prometheus_range": _condition,
}
