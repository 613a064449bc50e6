"""The saga orchestrator on a real nats-server, a real Prometheus and a deployer on loopback
that counts calls per idempotency key: success, failure and compensation in reverse, a failed
verification, approval, rejection, expiry, pause, the rate limit, refusals, escalation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from nats.js import JetStreamContext

from eventlog.envelope import Event, new_event
from eventlog.history import incident_events
from eventlog.payloads import (
    AnomalyResolved,
    CompensationEscalated,
    CompensationStarted,
    Hypothesis,
    IncidentResolved,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    RootCauseConcluded,
    SagaCompensated,
    SagaStepFailed,
    SagaStepStarted,
    VerificationFailed,
    VerificationMeasured,
    VerificationPassed,
)
from eventlog.payloads.investigation import RootCauseReport
from eventlog.payloads.remediation import RemediationMode
from responder.saga.catalog import Catalog
from responder.saga.orchestrator import Orchestrator, Timing, incident_signal, run_orchestrator
from responder.saga.pause import control_bucket, set_pause
from responder.saga.policy import Policy, ServicePolicy
from responder.saga.progress import Wait
from responder.saga.proposals import propose
from tests.detector.prometheus_server import PrometheusServer
from tests.responder.running import anomaly, append
from tests.responder.saga_target import Deployer, catalog_for
from tests.responder.watching import Seen, of, seen

__all__ = ["seen"]  # a fixture

AUTO = ServicePolicy(low="auto", medium="auto", high="auto")
POLICY = Policy(
    services={s: AUTO for s in ("checkout", "payments", "search", "ledger")},
    max_per_service_per_hour=10,
)
PASSING = {"query": "vector(0)", "success_condition": "result == 0", "count": 2,
           "interval_seconds": 0.05, "settle_seconds": 0}  # fmt: skip
FAILING = {**PASSING, "query": "vector(1)", "failure_limit": 0}
QUICK = {"count": 1, "interval_seconds": 0.01, "settle_seconds": 0}  # no query: the alert tells
VERSIONS = {"checkout": "1.0", "payments": "2.0", "search": "3.0", "ledger": "4.0"}


def step(service: str, version: str, action: str = "set_version") -> RemediationAction:
    return RemediationAction(action=action, params={"service": service, "version": version})


THREE = [step("checkout", "1.1"), step("payments", "2.1"), step("search", "3.1")]


@pytest.fixture
async def deployer() -> AsyncIterator[Deployer]:
    """The deployer on loopback, every service at its first version; `search` refuses."""
    target = Deployer(VERSIONS, failing={"search"})
    async with target.running():
        yield target


def orchestrator(
    js: JetStreamContext,
    deployer: Deployer,
    *,
    verify: dict[str, Any] | None = QUICK,
    policy: Policy = POLICY,
    prometheus: PrometheusServer | None = None,
    **more: Any,
) -> Orchestrator:
    catalog = Catalog.model_validate(catalog_for(deployer.url, verify=verify))
    return Orchestrator(
        js, catalog, policy, prometheus_url=prometheus.url if prometheus else None,
        timing=Timing(backoff=0.01), **more,
    )  # fmt: skip


async def proposed(
    js: JetStreamContext,
    orch: Orchestrator,
    steps: list[RemediationAction],
    mode: RemediationMode | None = None,
    incident: str = "inc-1",
) -> str:
    done = await propose(js, incident, steps, catalog=orch.catalog, policy=orch.policy,
                         by="ana", mode=mode)  # fmt: skip
    assert done.accepted is not None, done.refused
    return done.saga_id


async def story(js: JetStreamContext, incident: str = "inc-1") -> list[Event]:
    return [s.event for s in await incident_events(js, incident)]


async def kinds(js: JetStreamContext, incident: str = "inc-1") -> list[str]:
    """The saga's events, each as its type and the step it is about."""
    out = []
    for event in await story(js, incident):
        step = getattr(event.data, "step", None)
        out.append(event.type if step is None else f"{event.type}({step})")
    return [k for k in out if not k.startswith("Anomaly")]


async def test_a_saga_runs_its_steps_verifies_by_metrics_and_resolves_the_incident(
    js: JetStreamContext, deployer: Deployer, prometheus: PrometheusServer
) -> None:
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer, verify=PASSING, prometheus=prometheus)
    await proposed(js, orch, THREE[:2])
    assert await orch.advance("inc-1") == {}
    assert await kinds(js) == [
        "RemediationProposed", "SagaStarted",
        "SagaStepStarted(0)", "SagaStepSucceeded(0)", "SagaStepStarted(1)", "SagaStepSucceeded(1)",
        "VerificationMeasured", "VerificationMeasured", "VerificationPassed",
        "SagaCompleted", "IncidentResolved",
    ]  # fmt: skip
    events = await story(js)
    measured = [e.data for e in events if isinstance(e.data, VerificationMeasured)]
    assert [(m.index, m.observed, m.ok) for m in measured] == [(0, 0.0, True), (1, 0.0, True)]
    (resolved,) = [e.data for e in events if isinstance(e.data, IncidentResolved)]
    assert resolved.how == "remediation" and "vector(0) result == 0" in resolved.summary
    assert deployer.versions == {**VERSIONS, "checkout": "1.1", "payments": "2.1"}
    assert sorted(deployer.calls.values()) == [1, 1]  # each step once, under its own key
    assert await orch.advance("inc-1") == {}  # over: nothing more happens
    assert len(await story(js)) == len(events)


async def test_a_failed_step_compensates_the_completed_steps_in_reverse(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer)
    await proposed(js, orch, THREE)
    await orch.advance("inc-1")
    assert await kinds(js) == [
        "RemediationProposed", "SagaStarted",
        "SagaStepStarted(0)", "SagaStepSucceeded(0)", "SagaStepStarted(1)", "SagaStepSucceeded(1)",
        "SagaStepStarted(2)", "SagaStepFailed(2)",
        "CompensationStarted(1)", "CompensationSucceeded(1)",
        "CompensationStarted(0)", "CompensationSucceeded(0)",
        "SagaCompensated",
    ]  # fmt: skip
    events = await story(js)
    undo = [e.data for e in events if isinstance(e.data, CompensationStarted)]
    # Each undone with the version the deployer said it replaced.
    assert [(u.action, u.params) for u in undo] == [
        ("set_version", {"service": "payments", "version": "2.0"}),
        ("set_version", {"service": "checkout", "version": "1.0"}),
    ]
    (end,) = [e.data for e in events if isinstance(e.data, SagaCompensated)]
    assert end.reason.startswith("step 2 failed: 422: ") and "health check failed" in end.reason
    assert deployer.versions == VERSIONS  # back where it was
    assert not any(isinstance(e.data, IncidentResolved) for e in events)


async def test_a_failed_verification_compensates_every_step(
    js: JetStreamContext, deployer: Deployer, prometheus: PrometheusServer
) -> None:
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer, verify=FAILING, prometheus=prometheus)
    await proposed(js, orch, THREE[:2])
    await orch.advance("inc-1")
    assert await kinds(js) == [
        "RemediationProposed", "SagaStarted",
        "SagaStepStarted(0)", "SagaStepSucceeded(0)", "SagaStepStarted(1)", "SagaStepSucceeded(1)",
        "VerificationMeasured", "VerificationFailed",  # failure_limit 0: the first one ends it
        "CompensationStarted(1)", "CompensationSucceeded(1)",
        "CompensationStarted(0)", "CompensationSucceeded(0)",
        "SagaCompensated",
    ]  # fmt: skip
    events = await story(js)
    (failed,) = [e.data for e in events if isinstance(e.data, VerificationFailed)]
    assert failed.observed == 1.0 and failed.reason == "1 of 1 measurements failed result == 0"
    assert deployer.versions == VERSIONS


async def test_the_alert_resolving_counts_as_recovery(
    js: JetStreamContext, deployer: Deployer, seen: Seen
) -> None:
    """No Prometheus to ask: the alert's own resolution tells, whenever it comes."""
    fired = await append(js, anomaly("checkout"))
    verify = {"count": 100, "interval_seconds": 0.05, "settle_seconds": 0}
    orch = orchestrator(js, deployer, verify=verify)
    await proposed(js, orch, THREE[:1])
    running = asyncio.create_task(orch.advance("inc-1"))
    await seen.first(of("SagaStepSucceeded", 0))
    assert not running.done()  # verifying: waiting for the alert
    data = fired.data
    await append(js, AnomalyResolved(origin="alertmanager", name=data.name,
                                     fingerprint=data.fingerprint, starts_at=data.starts_at,
                                     ends_at=datetime.now(UTC)))  # fmt: skip
    await asyncio.wait_for(running, 10)
    assert (await kinds(js))[-3:] == ["VerificationPassed", "SagaCompleted", "IncidentResolved"]
    passed = [e.data for e in await story(js) if isinstance(e.data, VerificationPassed)]
    assert passed[0].check == "the alert resolved"


async def test_approval_then_the_saga_goes_on_and_a_rejection_ends_it(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer)
    first = await proposed(js, orch, THREE[:1], mode="approval")
    waits = await orch.advance("inc-1")
    assert list(waits) == [first] and waits[first].why == "awaiting approval"
    assert await kinds(js) == ["RemediationProposed"] and deployer.calls == {}
    await append(js, RemediationApproved(saga_id=first, by="ana", comment="go"))
    second = await proposed(js, orch, THREE[1:2], mode="approval")
    await append(js, RemediationRejected(saga_id=second, by="bob", reason="not now"))
    assert await orch.advance("inc-1") == {}
    started = [e.data for e in await story(js) if isinstance(e.data, SagaStepStarted)]
    assert [s.saga_id for s in started] == [first]  # the rejected one never ran
    assert deployer.versions["checkout"] == "1.0"  # ran, failed its verification, undone
    assert deployer.versions["payments"] == "2.0" and len(deployer.calls) == 2


async def test_an_approval_that_never_comes_expires_on_a_jetstream_timer(
    js: JetStreamContext, deployer: Deployer, seen: Seen
) -> None:
    await append(js, anomaly("checkout"))
    policy = POLICY.model_copy(update={"approval_expiry_minutes": 0.01})  # 0.6 s
    orch = orchestrator(js, deployer, policy=policy)
    stop, ready = asyncio.Event(), asyncio.Event()
    consumer = asyncio.create_task(run_orchestrator(orch, stop, ready=ready))
    try:
        await ready.wait()
        saga_id = await proposed(js, orch, THREE[:1], mode="approval")
        rejected = (await seen.first(of("RemediationRejected"))).data
    finally:
        stop.set()
        await consumer
    assert rejected.saga_id == saga_id and rejected.by == "policy"
    assert rejected.reason == "expired: no approval within 0.01 min"
    assert deployer.calls == {}


async def test_pause_stops_new_steps_at_once_lets_the_running_one_finish_and_resume_goes_on(
    js: JetStreamContext, deployer: Deployer, seen: Seen
) -> None:
    await append(js, anomaly("checkout"))
    control = await control_bucket(js)
    verify = {"count": 1, "interval_seconds": 0.01, "settle_seconds": 0}
    orch = orchestrator(js, deployer, verify=verify, control=control)
    stop, ready = asyncio.Event(), asyncio.Event()
    consumer = asyncio.create_task(run_orchestrator(orch, stop, ready=ready))
    try:
        await ready.wait()
        deployer.hold = asyncio.Event()
        await proposed(js, orch, THREE[:2])
        await deployer.arrived.wait()  # step 0 is running
        await set_pause(control, True, by="ana", reason="maintenance")
        deployer.hold.set()
        await seen.first(of("SagaStepSucceeded", 0))
        # The delivery ends once the saga waits for the pause to lift: acked, nothing begun.
        await _settled(js)
        assert (await kinds(js))[-1] == "SagaStepSucceeded(0)"
        await set_pause(control, False, by="ana")
        await seen.first(of("SagaCompensated"))  # step 1, then verification (no alert resolved)
    finally:
        stop.set()
        await consumer
    assert "SagaStepSucceeded(1)" in await kinds(js)


async def test_the_rate_limit_refuses_a_remediation_past_its_hourly_count(
    js: JetStreamContext, deployer: Deployer
) -> None:
    policy = POLICY.model_copy(update={"max_per_service_per_hour": 1})
    orch = orchestrator(js, deployer, policy=policy)
    for incident in ("inc-1", "inc-2"):
        await append(js, anomaly("checkout"), incident)
        await proposed(js, orch, [step("checkout", "9", "note")], incident=incident)
    await orch.advance("inc-1")
    dry = await proposed(js, orch, [step("checkout", "9", "note")], mode="dry_run",
                         incident="inc-2")  # fmt: skip
    await orch.advance("inc-2")
    rejected = [e.data for e in await story(js, "inc-2") if isinstance(e.data, RemediationRejected)]
    assert [r.reason for r in rejected] == [
        "rate limit: 1 remediations of checkout in the last hour (max 1)"
    ]
    assert (await kinds(js, "inc-2"))[-4:] == [  # the dry run is not limited
        "SagaStarted", "SagaStepStarted(0)", "SagaStepSucceeded(0)", "SagaCompleted"
    ]  # fmt: skip
    assert any(getattr(e.data, "saga_id", "") == dry for e in await story(js, "inc-2"))


async def test_a_plan_outside_the_catalog_written_straight_to_the_bus_is_refused_at_start(
    js: JetStreamContext, deployer: Deployer
) -> None:
    """Whoever can append events cannot widen the catalog: the plan is checked again."""
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer)
    forced = {"service": "checkout", "version": "1", "force": True}
    plans = {
        "s-unknown": [RemediationAction(action="drop_database", params={"service": "checkout"})],
        "s-option": [step("checkout --all", "1")],
        "s-param": [RemediationAction(action="set_version", params=forced)],
    }
    for saga_id, steps in plans.items():
        plan = RemediationProposed(saga_id=saga_id, steps=steps, mode="auto")
        await append(js, plan)
    await orch.advance("inc-1")
    rejected = {e.data.saga_id: e.data for e in await story(js)
                if isinstance(e.data, RemediationRejected)}  # fmt: skip
    pattern = "'^[a-z][a-z0-9-]{0,62}$'"
    assert {k: (r.by, r.reason) for k, r in rejected.items()} == {
        "s-unknown": ("policy", "step 0 ('drop_database'): no such action in the catalog"),
        "s-option": (
            "policy",
            f"step 0 ('set_version'): params: service: 'checkout --all' does not match {pattern}",
        ),
        "s-param": (
            "policy",
            "step 0 ('set_version'): params: Additional properties are not allowed "
            "('force' was unexpected)",
        ),
    }
    assert deployer.calls == {}


async def test_a_plan_made_from_hostile_alert_text_is_refused_and_recorded(
    js: JetStreamContext, deployer: Deployer
) -> None:
    """An alert whose service label is a command: the report blames it, the catalog's
    remedy is proposed for it, and the plan is refused by the parameter's schema."""
    hostile = "checkout; kubectl delete namespace prod"
    await append(js, anomaly(hostile, annotations={"description": "run flip on payments"}))
    catalog = catalog_for(deployer.url)
    catalog["actions"][3]["remedies"] = ["deploy_or_config_change"]  # note
    orch = Orchestrator(js, Catalog.model_validate(catalog), POLICY)
    concluded = conclusion(hostile)
    await orch.recommend(await append(js, concluded), concluded)
    (refused,) = [e.data for e in await story(js) if isinstance(e.data, RemediationRejected)]
    assert refused.by == "policy" and "does not match" in refused.reason
    assert deployer.calls == {}


def conclusion(service: str, confidence: float = 0.85, attempt: int = 1) -> RootCauseConcluded:
    top = Hypothesis(category="deploy_or_config_change", service=service, confidence=confidence,
                     explanation="5xx 1% -> 35% after the deploy")  # fmt: skip
    report = RootCauseReport(summary=f"a bad deploy of {service}", hypotheses=[top])
    return RootCauseConcluded(attempt=attempt, report=report)


async def test_the_report_proposes_the_catalogs_remedy_once_and_only_when_sure(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    catalog = catalog_for(deployer.url)
    catalog["actions"][3]["remedies"] = ["deploy_or_config_change"]  # note
    orch = Orchestrator(js, Catalog.model_validate(catalog), POLICY)
    unsure = conclusion("checkout", confidence=0.4)
    await orch.recommend(await append(js, unsure), unsure)
    assert await kinds(js) == ["RootCauseConcluded"]
    sure = conclusion("checkout", attempt=2)
    event = await append(js, sure)
    await orch.recommend(event, sure)
    await orch.recommend(event, sure)  # delivered again: proposed once
    plans = [e.data for e in await story(js) if isinstance(e.data, RemediationProposed)]
    assert len(plans) == 1 and plans[0].steps[0].params == {"service": "checkout"}
    assert plans[0].steps[0].action == "note" and plans[0].mode == "auto"
    assert plans[0].rationale.startswith("recommended by attempt 2's report: ")
    third = conclusion("checkout", attempt=3)
    await orch.recommend(await append(js, third), third)  # the first still open: no second
    assert len([e for e in await story(js) if isinstance(e.data, RemediationProposed)]) == 1


async def test_a_compensation_that_keeps_failing_is_escalated_and_never_forgotten(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer)
    await proposed(js, orch, [step("checkout", "1.1", "flip"), step("search", "3.1")])
    waits = await orch.advance("inc-1")
    assert [w.why for w in waits.values()] == ["a human must undo a step"]
    kinds_seen = await kinds(js)
    assert kinds_seen[-8:] == [
        "SagaStepFailed(1)",
        "CompensationStarted(0)", "CompensationFailed(0)",
        "CompensationStarted(0)", "CompensationFailed(0)",
        "CompensationStarted(0)", "CompensationFailed(0)",
        "CompensationEscalated(0)",
    ]  # fmt: skip
    escalated = [e.data for e in await story(js) if isinstance(e.data, CompensationEscalated)]
    assert len(escalated) == 1 and escalated[0].attempts == 3
    assert escalated[0].action == "unflip"  # the compensation that failed, as its other events
    assert escalated[0].error.startswith("404: ")
    assert "SagaCompensated" not in kinds_seen  # not over: a person must act
    assert isinstance(next(iter((await orch.advance("inc-1")).values())), Wait)


async def _settled(js: JetStreamContext) -> None:
    """Every message the orchestrator's durable was given is acked."""
    for _ in range(500):
        info = await js.consumer_info("VIGIL_EVENTS", "saga")
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the orchestrator never settled")


async def test_an_executor_that_cannot_even_send_fails_the_step_instead_of_a_retry_loop(
    js: JetStreamContext, deployer: Deployer
) -> None:
    """A URL template naming no param (a catalog refuses one when it loads; here it is put in
    after): nothing was sent, so the step failed, once."""
    await append(js, anomaly("checkout"))
    catalog = Catalog.model_validate(catalog_for(deployer.url))
    broken = catalog.actions[0].executor.model_copy(
        update={"url": deployer.url + "/services/{team}/deploy"}
    )
    catalog.actions[0] = catalog.actions[0].model_copy(update={"executor": broken})
    orch = Orchestrator(js, catalog, POLICY)
    await proposed(js, orch, THREE[:1])
    assert await orch.advance("inc-1") == {}
    (failed,) = [e.data for e in await story(js) if isinstance(e.data, SagaStepFailed)]
    assert failed.error == "TemplateError: {team} names nothing"
    assert (await kinds(js))[-1] == "SagaCompensated" and deployer.calls == {}


async def test_an_old_report_or_a_resolved_incident_proposes_nothing(
    js: JetStreamContext, deployer: Deployer
) -> None:
    """A new orchestrator reads every report in the stream: the old ones must not act."""
    await append(js, anomaly("checkout"))
    catalog = catalog_for(deployer.url)
    catalog["actions"][3]["remedies"] = ["deploy_or_config_change"]  # note
    later = datetime.now(UTC) + timedelta(minutes=31)
    orch = Orchestrator(js, Catalog.model_validate(catalog), POLICY, clock=lambda: later)
    old = conclusion("checkout")
    await orch.recommend(await append(js, old), old)
    await append(js, IncidentResolved(how="alert_resolved"), "inc-1")
    orch.clock = lambda: datetime.now(UTC)
    fresh = conclusion("checkout", attempt=2)
    await orch.recommend(await append(js, fresh), fresh)
    assert not any(isinstance(e.data, RemediationProposed) for e in await story(js))


def graph(expr: str) -> str:
    return f"http://prometheus:9090/graph?g0.expr={quote(expr)}&g0.tab=1"


@pytest.mark.parametrize(
    ("theirs", "ours", "passed"),
    [
        ("payments", "checkout", True),  # another service still breaching: not ours
        ("checkout", "checkout", False),  # ours still breaching
    ],
)
async def test_by_default_the_alerts_own_expr_is_measured_on_the_alerts_own_series(
    js: JetStreamContext, deployer: Deployer, prometheus: PrometheusServer,
    theirs: str, ours: str, passed: bool,
) -> None:  # fmt: skip
    expr = f'label_replace(vector(0.3), "service", "{theirs}", "", "") > 0.05'
    await append(js, anomaly(ours, generator_url=graph(expr)))
    verify = {"count": 2, "interval_seconds": 0.05, "settle_seconds": 0}  # no query
    orch = orchestrator(js, deployer, verify=verify, prometheus=prometheus)
    await proposed(js, orch, THREE[:1])
    await orch.advance("inc-1")
    events = await story(js)
    measured = [e.data for e in events if isinstance(e.data, VerificationMeasured)]
    assert measured[0].query == expr
    assert measured[0].ok is passed and (measured[0].observed is None) is passed
    assert (await kinds(js))[-1] == ("IncidentResolved" if passed else "SagaCompensated")


def test_the_incidents_signal_is_the_alerts_expr_or_the_detectors_fixed_line() -> None:
    def signal(data: Any) -> tuple[str, str] | None:
        return incident_signal([new_event(data, incident_id="i", source="t")])

    assert signal(anomaly("checkout", generator_url=graph("up == 0"))) == ("up == 0", "empty")
    assert signal(anomaly("checkout")) is None  # no generator URL: nothing to ask
    line = {"query": "errors_ratio", "detector": "threshold", "threshold": "0.05"}

    def detected(**notes: str) -> Any:
        return anomaly("checkout", annotations=notes).model_copy(update={"origin": "detector"})

    above = detected(**line, direction="above")
    below = detected(**line, direction="below")
    zscore = detected(query="errors_ratio", detector="zscore")
    assert signal(above) == ("errors_ratio", "result <= 0.05")
    assert signal(below) == ("errors_ratio", "result >= 0.05")
    assert signal(zscore) is None  # no fixed line: only its resolution tells


async def test_an_incident_resolution_owed_after_a_crash_is_appended_once(
    js: JetStreamContext, deployer: Deployer
) -> None:
    """Died between SagaCompleted and IncidentResolved: the next look appends it, once."""
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer)
    await proposed(js, orch, [step("checkout", "9", "note")])
    await orch.advance("inc-1")
    resolved = [e for e in await story(js) if isinstance(e.data, IncidentResolved)]
    assert len(resolved) == 1
    # The same story without the resolution, in a second incident: as if it died there.
    for event in await story(js):
        if not isinstance(event.data, IncidentResolved):
            await append(js, event.data, "inc-2")
    assert (await kinds(js, "inc-2"))[-1] == "SagaCompleted"
    await orch.advance("inc-2")
    await orch.advance("inc-2")
    assert (await kinds(js, "inc-2"))[-2:] == ["SagaCompleted", "IncidentResolved"]
    assert (
        resolved[0].data.summary
        == "note; recovery verified: nothing to verify: no step changed anything (noop)"
    )
