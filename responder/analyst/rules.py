"""The built-in analyst's ranking: documented rules over the evidence, each hypothesis scored.

The rules (docs/analyst.md says the same, for users):

A service is *degraded* when, after the onset against before it, its 5xx ratio is at least 1%
and at least doubled, or its p99 latency rose by half or more (to at least 50 ms), or its
scrape health (`up`) fell below 0.9. The *path* is the alerting service, what it calls and
what those call; a service is *implicated* when degraded or alerting.

- deploy_or_config_change: a change recorded on a service of the path, within 90 minutes
  before the onset (or 2 after), on a service that is degraded. 0.85 within 30 minutes, 0.7
  before that; 0.5 when there are no signals to confirm it; minus 0.3 when the service's
  memory was already climbing before the onset (the change came after the cause). A change on
  a service that is healthy, off the path, or cut off from the alerting service by a healthy
  service between, is ruled out.
- dependency_failure: a service of the path below the alerting one is degraded (0.75) or
  alerting (0.5), at most 0.85 for both; minus 0.3 when a service it calls is implicated too,
  minus 0.3 when it is asked 1.5 times as much as before (a victim either way). When such a
  failure shows its own leak, saturation or lost targets, that is a hypothesis 0.05 above it.
- memory_leak: resident memory rising before the onset by 10% of its level an hour or more,
  and after the onset higher than before or restarted (an out-of-memory kill ends the climb):
  0.75, +0.1 with restarts after the onset.
- traffic_surge: requests per second up 1.6 times or more: 0.7, +0.1 if latency or errors rose.
- resource_saturation: CPU up 1.5 times or more without traffic to explain it (under 1.3
  times), with latency up: 0.65.
- infrastructure_node: scrape health down on the alerting service with no change to blame
  (0.65), on it and a dependency at once (0.8); restarts with no leak nor change, 0.5.
- error_rate_regression: errors up on the alerting service and nothing above scores 0.5 or
  more: 0.5; otherwise 0.3 as a runner-up.
- unknown: first (0.55) when nothing scores 0.45 or more; otherwise last, at 0.1.

Past incidents of the same alert add 0.05 to a hypothesis of the category they ended with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from eventlog.payloads.investigation import Category, Hypothesis, RootCauseReport, RuledOut
from responder.analyst.evidence import Change, Evidence, Signal

CHANGE_BEFORE = timedelta(minutes=90)
CHANGE_CLOSE = timedelta(minutes=30)
CHANGE_AFTER = timedelta(minutes=2)


@dataclass
class Candidate:
    category: Category
    service: str | None
    score: float
    why: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Health:
    """What a service's signals say, read once."""

    errors: Signal | None
    latency: Signal | None
    up: Signal | None
    traffic: Signal | None
    cpu: Signal | None
    memory: Signal | None
    restarts: Signal | None

    @property
    def errors_up(self) -> bool:
        s = self.errors
        return bool(s and s.after is not None and s.after >= 0.01 and (s.ratio or 0) >= 2)

    @property
    def latency_up(self) -> bool:
        s = self.latency
        return bool(s and s.after is not None and s.after >= 0.05 and (s.ratio or 0) >= 1.5)

    @property
    def down(self) -> bool:
        s = self.up
        return bool(s and s.after is not None and s.after < 0.9 and (s.before or 1) > s.after)

    @property
    def degraded(self) -> bool:
        return self.errors_up or self.latency_up or self.down

    @property
    def leaking(self) -> bool:
        """Memory rising before the onset by 10% of its level an hour or more, and after it
        still higher, or restarted (an out-of-memory kill ends a leak's climb)."""
        s = self.memory
        if not s or s.slope_before is None or not s.before:
            return False
        rising = s.slope_before * 60 / s.before >= 0.10
        return rising and ((s.after or 0) >= s.before * 1.05 or self.restarted)

    @property
    def restarted(self) -> bool:
        s = self.restarts
        return bool(s and s.after and s.after > (s.before or 0))

    def calls(self) -> list[str]:
        sigs = (self.errors, self.latency, self.up, self.traffic, self.cpu, self.memory)
        return sorted({s.call for s in (*sigs, self.restarts) if s})


def health(evidence: Evidence, service: str) -> Health | None:
    found = evidence.signals.get(service)
    if not found:
        return None

    def pick(*names: str) -> Signal | None:
        return next((found[n] for n in names if n in found), None)

    return Health(
        errors=pick("errors", "error_ratio"),
        latency=pick("latency", "latency_p99"),
        up=pick("up", "scrape_health"),
        traffic=pick("traffic", "requests"),
        cpu=pick("cpu"),
        memory=pick("memory"),
        restarts=pick("restarts"),
    )


def rank(evidence: Evidence) -> RootCauseReport:
    service = evidence.service
    ruled_out: list[RuledOut] = []
    found: list[Candidate] = []
    path = evidence.path()
    own = health(evidence, service) if service else None
    found += _changes(evidence, service, path, ruled_out)
    found += _dependencies(evidence, path[1:], ruled_out)
    if service and own is not None:
        found += _own(service, own, found)
    _similar(evidence, found)
    return _report(evidence, service, found, ruled_out)


def _implicated(evidence: Evidence, service: str) -> bool:
    """Degraded by its signals, or alerting."""
    state = health(evidence, service)
    return bool(evidence.alerting.get(service)) or (state is not None and state.degraded)


def _cut_off(evidence: Evidence, service: str) -> str | None:
    """A service two hops down whose trouble cannot reach the alerting service: every
    service between them is healthy (its name), else None."""
    alerting = evidence.service
    near = evidence.depends_on.get(alerting or "", [])
    if service == alerting or service in near:
        return None
    between = [n for n in near if service in evidence.depends_on.get(n, [])]
    if between and not any(_implicated(evidence, n) for n in between):
        return between[0]
    return None


def _changes(
    evidence: Evidence, service: str | None, path: list[str], ruled_out: list[RuledOut]
) -> list[Candidate]:
    onset = evidence.onset
    if onset is None:
        return []
    found = []
    for change in evidence.changes:
        before = onset - change.at
        if not -CHANGE_AFTER <= before <= CHANGE_BEFORE:
            continue
        told = f"{change.kind} of {change.service} ({_ref(change)}) {_minutes(before)} the onset"
        if change.service not in path:
            reason = f"{change.service} is not on the path of {service}"
            ruled_out.append(_ruled_out_change(told, change, [change.call], reason))
            continue
        state = health(evidence, change.service)
        if state is not None and not state.degraded:
            reason = f"{change.service} shows no errors, latency or scrape loss after it"
            ruled_out.append(_ruled_out_change(told, change, [change.call, *state.calls()], reason))
            continue
        healthy_between = _cut_off(evidence, change.service)
        if healthy_between is not None:
            reason = f"{healthy_between}, between it and {service}, is healthy"
            ruled_out.append(_ruled_out_change(told, change, [change.call], reason))
            continue
        score = 0.5 if state is None else (0.85 if before <= CHANGE_CLOSE else 0.7)
        why = [told]
        calls = [change.call]
        if state is not None:
            why.append(_degradation(change.service, state))
            calls += state.calls()
            if state.leaking:
                score -= 0.3
                why.append("but its memory was climbing before it")
        found.append(Candidate("deploy_or_config_change", change.service, score, why, calls))
    return found


def _ruled_out_change(told: str, change: Change, calls: list[str], reason: str) -> RuledOut:
    return RuledOut(
        what=told,
        category="deploy_or_config_change",
        service=change.service,
        evidence=calls,
        reason=reason,
    )


def _dependencies(
    evidence: Evidence, deps: list[str], ruled_out: list[RuledOut]
) -> list[Candidate]:
    found = []
    for dep in deps:
        state = health(evidence, dep)
        alerts = evidence.alerting.get(dep, [])
        if state is not None and not state.degraded and not alerts:
            ruled_out.append(
                RuledOut(
                    what=f"a failure of {dep}",
                    category="dependency_failure",
                    service=dep,
                    evidence=state.calls(),
                    reason=f"{dep} is healthy: {_levels(state)}",
                )
            )
            continue
        score = (0.75 if state is not None and state.degraded else 0) + (0.5 if alerts else 0)
        if score == 0 or _cut_off(evidence, dep) is not None:
            continue
        why, calls = [], [call for _, call in alerts]
        if state is not None and state.degraded:
            why.append(_degradation(dep, state))
            calls += state.calls()
        if alerts:
            why.append(f"{dep} is alerting: {', '.join(sorted({n for n, _ in alerts}))}")
        score = min(score, 0.85)
        # A failing service is often the victim of something else: of what it calls in turn,
        # or of more requests than before from its callers. The blame moves on.
        below = [d for d in evidence.depends_on.get(dep, []) if _implicated(evidence, d)]
        if below:
            score -= 0.3
            why.append(f"but {', '.join(below)}, which it calls, is failing too")
        load = state.traffic.ratio if state is not None and state.traffic else None
        if load is not None and load >= 1.5:
            score -= 0.3
            why.append(f"but it is asked {_times(load)} as much as before: its callers' load")
        found.append(Candidate("dependency_failure", dep, score, why, calls))
        if state is not None and state.degraded and not below and (load or 1) < 1.5:
            found += _mechanisms(dep, state, min(score + 0.05, 0.9))
    return found


def _mechanisms(dep: str, state: Health, score: float) -> list[Candidate]:
    """Why a failing dependency fails, when its own signals tell: a more specific cause than
    its failure alone, so it ranks just above it (`score`)."""
    calls = state.calls()
    found = []
    if state.leaking:
        found.append(Candidate("memory_leak", dep, score, [_leak(dep, state)], calls))
    cpu = state.cpu.ratio if state.cpu else None
    traffic = state.traffic.ratio if state.traffic else None
    if cpu is not None and cpu >= 1.5 and (traffic or 1) < 1.3 and state.latency_up:
        why = [f"CPU of {dep} {_times(cpu)} with traffic {_times(traffic or 1)}"]
        found.append(Candidate("resource_saturation", dep, score, why, calls))
    if state.down:
        why = [f"scrape health of {dep} fell to {state.up.after:.2f}"]  # type: ignore[union-attr]
        found.append(Candidate("infrastructure_node", dep, score, why, calls))
    return found


def _own(service: str, state: Health, so_far: list[Candidate]) -> list[Candidate]:
    found = []
    calls = state.calls()
    if state.leaking:
        score = 0.85 if state.restarted else 0.75
        found.append(Candidate("memory_leak", service, score, [_leak(service, state)], calls))
    traffic = state.traffic.ratio if state.traffic else None
    if traffic is not None and traffic >= 1.6:
        score = 0.8 if (state.latency_up or state.errors_up) else 0.7
        why = [f"requests to {service} {_times(traffic)} after the onset"]
        found.append(Candidate("traffic_surge", service, score, why, calls))
    cpu = state.cpu.ratio if state.cpu else None
    if cpu is not None and cpu >= 1.5 and (traffic or 1) < 1.3 and state.latency_up:
        why = [f"CPU of {service} {_times(cpu)} with traffic {_times(traffic or 1)}"]
        found.append(Candidate("resource_saturation", service, 0.65, why, calls))
    blamed_change = any(
        c.category == "deploy_or_config_change" and c.service == service for c in so_far
    )
    if state.down and not blamed_change:
        others = [
            c for c in so_far if c.category == "dependency_failure" and "scrape" in str(c.why)
        ]
        why = [f"scrape health of {service} fell to {state.up.after:.2f}"]  # type: ignore[union-attr]
        found.append(Candidate("infrastructure_node", service, 0.8 if others else 0.65, why, calls))
    elif state.restarted and not state.leaking and not blamed_change:
        why = [f"{service} restarted after the onset with no change or leak to explain it"]
        found.append(Candidate("infrastructure_node", service, 0.5, why, calls))
    if state.errors_up:
        best = max((c.score for c in [*so_far, *found]), default=0)
        why = [_degradation(service, state)]
        score = 0.5 if best < 0.5 else 0.3
        found.append(Candidate("error_rate_regression", service, score, why, calls))
    return found


def _similar(evidence: Evidence, found: list[Candidate]) -> None:
    name = evidence.alert.get("trigger", {}).get("name")
    for incident, call in evidence.similar:
        if incident.get("title") != name:
            continue
        for candidate in found:
            if candidate.category == incident.get("root_cause"):
                candidate.score = min(candidate.score + 0.05, 0.95)
                candidate.evidence.append(call)
                candidate.why.append(
                    f"incident {incident.get('incident_id')} of the same alert "
                    f"ended as {candidate.category}"
                )


def _report(
    evidence: Evidence, service: str | None, found: list[Candidate], ruled_out: list[RuledOut]
) -> RootCauseReport:
    best: dict[tuple[str, str | None], Candidate] = {}
    for c in found:
        key = (c.category, c.service)
        if key not in best or c.score > best[key].score:
            best[key] = c
    ranked = sorted(best.values(), key=lambda c: -c.score)
    top = ranked[0].score if ranked else 0
    unknown_why = "the evidence points at no cause" if top < 0.45 else "other causes not seen"
    unknown = Candidate(
        "unknown",
        service,
        0.55 if top < 0.45 else 0.1,
        [unknown_why],
        [r.tool_call_id for r in evidence.results if r.ok],
    )
    ranked = [unknown, *ranked] if top < 0.45 else [*ranked, unknown]
    hypotheses = [
        Hypothesis(
            category=c.category,
            service=c.service,
            confidence=round(c.score, 2),
            explanation="; ".join(c.why),
            evidence=list(dict.fromkeys(c.evidence)),
        )
        for c in ranked[:5]
    ]
    lead = hypotheses[0]
    summary = (
        f"{lead.category.replace('_', ' ')} of {lead.service or 'an unknown service'}: "
        f"{lead.explanation}"
        if lead.category != "unknown"
        else f"no cause found for {evidence.alert.get('trigger', {}).get('name', 'the alert')}"
    )
    gaps = [f"{r.tool_name} ({r.tool_call_id}): {r.content}" for r in evidence.failed()]
    return RootCauseReport(
        summary=summary[:300], hypotheses=hypotheses, ruled_out=ruled_out, gaps=gaps
    )


# -- words and numbers ----------------------------------------------------------------------


def _degradation(service: str, state: Health) -> str:
    parts = []
    if state.errors_up and state.errors:
        parts.append(f"5xx {_pct(state.errors.before)} -> {_pct(state.errors.after)}")
    if state.latency_up and state.latency:
        parts.append(f"p99 {_s(state.latency.before)} -> {_s(state.latency.after)}")
    if state.down and state.up:
        parts.append(f"up {state.up.before or 0:.2f} -> {state.up.after or 0:.2f} (scrape)")
    return f"{service}: {', '.join(parts) or 'degraded'}"


def _levels(state: Health) -> str:
    parts = []
    if state.errors and state.errors.after is not None:
        parts.append(f"5xx {_pct(state.errors.before)} -> {_pct(state.errors.after)}")
    if state.latency and state.latency.after is not None:
        parts.append(f"p99 {_s(state.latency.before)} -> {_s(state.latency.after)}")
    return ", ".join(parts) or "no change in its signals"


def _leak(service: str, state: Health) -> str:
    s = state.memory
    assert s is not None and s.slope_before is not None and s.before
    per_hour = s.slope_before * 60 / s.before
    extra = ", and it restarted" if state.restarted else ""
    return (
        f"memory of {service} growing {per_hour:.0%} an hour before the onset "
        f"({_mb(s.before)} on average before, {_mb(s.after)} after){extra}"
    )


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value / 1e6:.0f} MB"


def _ref(change: Change) -> str:
    return change.ref or change.description or change.kind


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} min before" if minutes >= 0 else f"{-minutes:.0f} min after"


def _times(ratio: float) -> str:
    return f"x{ratio:.1f}"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.1%}"


def _s(value: float | None) -> str:
    return "?" if value is None else f"{value * 1000:.0f} ms"
