"""What a reviewer did to break the sagas, each now a test of what must hold: forged or
swapped plans, the pause after a crash, two starts racing the rate limit, outcomes that may
have acted, a late rejection, an expired approval, path segments, long plans."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import ValidationError

from eventlog.envelope import new_event
from eventlog.payloads import (
    CompensationEscalated,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
)
from eventlog.publisher import EventPublisher
from responder.saga.catalog import Catalog, TemplateError
from responder.saga.executors import HttpRunner, idempotency_key
from responder.saga.lease import Leases, lease_bucket
from responder.saga.orchestrator import Orchestrator, Timing, run_orchestrator
from responder.saga.pause import control_bucket, set_pause
from responder.saga.plan import PlanRefused, check_plan
from responder.saga.policy import Policy, ServicePolicy
from responder.saga.progress import Wait
from responder.saga.proposals import NotAwaitingApproval, decide
from tests.responder.running import anomaly, append
from tests.responder.saga_target import Deployer, catalog_for
from tests.responder.test_saga_orchestrator import (
    POLICY,
    THREE,
    _settled,
    deployer,
    kinds,
    orchestrator,
    proposed,
    step,
    story,
)
from tests.responder.watching import Seen, of, seen

__all__ = ["deployer", "seen"]  # fixtures


def commands(tmp_path: Path, slow: str) -> Catalog:
    """`drain`, undone by `restore`, and `boom`, which fails: commands that each leave a line
    in `effects`; the one named `slow` then outlives its 0.5 s timeout."""
    effects = tmp_path / "effects"
    params = {"type": "object", "required": ["service"],
              "properties": {"service": {"type": "string", "pattern": "^[a-z]+$"}}}  # fmt: skip

    def action(name: str, undo: Any, tail: str = "") -> dict[str, Any]:
        script = tmp_path / f"{name}.sh"
        script.write_text(f'#!/bin/sh\necho "{name} $VIGIL_IDEMPOTENCY_KEY" >> {effects}\n'
                          f"{tail}sleep {5 if name == slow else 0}\n")  # fmt: skip
        script.chmod(0o755)
        return {"name": name, "description": name, "params": params, "risk": "low",
                "executor": {"kind": "command", "program": str(script), "rerun_safe": False,
                             "timeout_seconds": 0.5 if name == slow else 30},
                "compensation": undo, "scope": {"services": "[a-z]+"}}  # fmt: skip

    undo = {"action": "restore", "params": {"service": "{params.service}"}}
    return Catalog.model_validate({"actions": [
        action("drain", undo), action("restore", "irreversible"),
        action("boom", "irreversible", "exit 3\n"),
    ]})  # fmt: skip


def effects(tmp_path: Path) -> list[str]:
    path = tmp_path / "effects"
    return path.read_text().splitlines() if path.exists() else []


async def test_a_compensation_that_may_have_acted_is_escalated_not_run_again(
    js: JetStreamContext, tmp_path: Path
) -> None:
    await append(js, anomaly("checkout"))
    orch = Orchestrator(js, commands(tmp_path, slow="restore"), POLICY,
                        timing=Timing(backoff=0.01))  # fmt: skip
    drain = RemediationAction(action="drain", params={"service": "checkout"})
    boom = RemediationAction(action="boom", params={"service": "checkout"})
    await proposed(js, orch, [drain, boom])
    waits = await orch.advance("inc-1")
    assert [w.why for w in waits.values()] == ["a human must undo a step"]
    assert [e.split()[0] for e in effects(tmp_path)] == ["drain", "boom", "restore"]  # once
    assert (await kinds(js))[-3:] == [
        "CompensationStarted(0)", "CompensationFailed(0)", "CompensationEscalated(0)"
    ]  # fmt: skip


async def test_a_step_that_may_have_acted_is_escalated_after_the_others_are_undone(
    js: JetStreamContext, tmp_path: Path
) -> None:
    await append(js, anomaly("checkout"))
    orch = Orchestrator(js, commands(tmp_path, slow="drain"), POLICY,
                        timing=Timing(backoff=0.01))  # fmt: skip
    await proposed(js, orch, [RemediationAction(action="drain", params={"service": "checkout"})])
    waits = await orch.advance("inc-1")
    assert [w.why for w in waits.values()] == ["a human must check a step"]
    events = await story(js)
    (failed,) = [e.data for e in events if isinstance(e.data, SagaStepFailed)]
    assert failed.uncertain and "not run again" in failed.error
    (escalated,) = [e.data for e in events if isinstance(e.data, CompensationEscalated)]
    assert escalated.error.startswith("the step may have taken effect: outcome unknown")
    assert "SagaCompensated" not in await kinds(js) and len(effects(tmp_path)) == 1


@pytest.mark.parametrize("leased", [False, True], ids=["alone", "leased"])
async def test_while_paused_a_step_a_crash_left_open_is_asked_about_not_run(
    js: JetStreamContext, deployer: Deployer, leased: bool
) -> None:
    await append(js, anomaly("checkout"))
    control = await control_bucket(js)
    leases = Leases(await lease_bucket(js), term=2.0) if leased else None
    orch = orchestrator(js, deployer, control=control, leases=leases)
    saga_id = await proposed(js, orch, THREE[:1])
    plan = [THREE[0].model_copy(update={"compensation": "set_version"})]
    # What an orchestrator killed right after recording the step's start leaves:
    await append(js, SagaStarted(saga_id=saga_id, steps=plan, services=["checkout"]))
    key = idempotency_key(saga_id, 0, 1)
    await append(js, SagaStepStarted(saga_id=saga_id, step=0, action="set_version",
                                     params=plan[0].params, idempotency_key=key))  # fmt: skip
    await set_pause(control, True, by="ana")
    assert await orch.advance("inc-1") == {saga_id: Wait("paused")}
    assert deployer.calls == {}
    await set_pause(control, False, by="ana")
    await orch.advance("inc-1")
    assert dict(deployer.calls) == {key: 1, idempotency_key(saga_id, 0, 1, undo=True): 1}


async def test_two_starts_on_one_service_at_once_keep_to_the_hourly_limit(
    js: JetStreamContext, deployer: Deployer
) -> None:
    orch = orchestrator(js, deployer, policy=POLICY.model_copy(
        update={"max_per_service_per_hour": 1}))  # fmt: skip
    for incident in ("inc-1", "inc-2"):
        await append(js, anomaly("checkout"), incident)
        await proposed(js, orch, [step("checkout", "9", "note")], incident=incident)
    await asyncio.gather(orch.advance("inc-1"), orch.advance("inc-2"))
    events = [e for i in ("inc-1", "inc-2") for e in await story(js, i)]
    assert len([e for e in events if isinstance(e.data, SagaStarted)]) == 1
    (rejected,) = [e.data for e in events if isinstance(e.data, RemediationRejected)]
    assert rejected.reason.startswith("rate limit: 1 remediations of checkout")


async def test_an_approval_is_for_the_first_plan_under_its_id_not_one_written_after(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    strict = Policy(services={s: ServicePolicy(low="approval") for s in ("checkout", "payments")})
    orch = orchestrator(js, deployer, policy=strict)
    saga_id = await proposed(js, orch, [step("checkout", "1.1", "note")])
    await append(js, RemediationApproved(saga_id=saga_id, by="ana", comment="a note is fine"))
    swapped = RemediationProposed(saga_id=saga_id, mode="approval", steps=[step("payments", "6")])
    await append(js, swapped)
    await orch.advance("inc-1")
    (started,) = [e.data for e in await story(js) if isinstance(e.data, SagaStarted)]
    assert [s.action for s in started.steps] == ["note"] and deployer.calls == {}


async def test_a_forged_start_runs_nothing_outside_the_catalog_nor_unapproved(
    js: JetStreamContext, deployer: Deployer
) -> None:
    """A SagaStarted written straight to the bus: each step is checked again before it runs."""
    await append(js, anomaly("checkout"))
    orch = orchestrator(js, deployer, policy=Policy())  # every service unknown: approval
    await append(js, RemediationProposed(saga_id="s-x", steps=[step("checkout", "1", "note")],
                                         mode="approval"))  # fmt: skip
    hostile = RemediationAction(action="set_version",
                                params={"service": "ledger --all", "version": "6"})  # fmt: skip
    valid = step("checkout", "7")
    for saga_id, steps in (("s-x", [hostile]), ("s-y", [valid])):
        if saga_id == "s-y":
            await append(js, RemediationProposed(saga_id="s-y", steps=[valid], mode="approval"))
        await append(js, SagaStarted(saga_id=saga_id, steps=steps, services=[]))
    await orch.advance("inc-1")
    failed = {e.data.saga_id: e.data.error for e in await story(js)
              if isinstance(e.data, SagaStepFailed)}  # fmt: skip
    assert failed["s-x"].startswith("refused: ('set_version'): params: service: 'ledger --all'")
    assert failed["s-y"] == "refused: ('set_version') needs an approval it never had"
    assert deployer.calls == {}


async def test_a_rejection_after_the_start_does_not_hide_the_saga_from_the_resume(
    js: JetStreamContext, deployer: Deployer, seen: Seen
) -> None:
    await append(js, anomaly("checkout"))
    control = await control_bucket(js)
    orch = orchestrator(js, deployer, control=control)
    stop, ready = asyncio.Event(), asyncio.Event()
    consumer = asyncio.create_task(run_orchestrator(orch, stop, ready=ready))
    try:
        await ready.wait()
        deployer.hold = asyncio.Event()
        saga_id = await proposed(js, orch, THREE[:2])
        await deployer.arrived.wait()
        await set_pause(control, True, by="ana")
        await append(js, RemediationRejected(saga_id=saga_id, by="bob", reason="too late"))
        deployer.hold.set()
        await seen.first(of("SagaStepSucceeded", 0))
        await _settled(js)
        await set_pause(control, False, by="ana")
        await seen.first(of("SagaCompensated"))  # step 1 ran, the verification failed, undone
    finally:
        stop.set()
        await consumer
    assert "SagaStepSucceeded(1)" in await kinds(js)


async def test_an_expired_plan_cannot_be_approved_nor_started_by_a_late_approval(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    later = datetime.now(UTC) + timedelta(hours=5)
    orch = orchestrator(js, deployer, clock=lambda: later)
    saga_id = await proposed(js, orch, [step("checkout", "1.1")], mode="approval")
    with pytest.raises(NotAwaitingApproval, match="no plan of incident inc-1 awaits approval"):
        await decide(js, "inc-1", approve=True, by="ana", expiry=timedelta(0))
    late = new_event(RemediationApproved(saga_id=saga_id, by="ana"), incident_id="inc-1",
                     source="test", occurred_at=later)  # fmt: skip
    await EventPublisher(js).publish(late)  # written anyway, five hours on
    await orch.advance("inc-1")  # five hours on: it came after the plan expired
    assert await kinds(js) == ["RemediationProposed", "RemediationApproved",
                               "RemediationRejected"]  # fmt: skip
    assert deployer.calls == {}


async def test_a_value_cannot_leave_its_path_segment() -> None:
    catalog = Catalog.model_validate(catalog_for("http://127.0.0.1:9"))
    action = catalog.get("set_version")
    assert action is not None
    for value in ("..", ".", ""):
        with pytest.raises(TemplateError, match="cannot stand as a segment"):
            await HttpRunner().run(action, {"service": value, "version": "1"}, "k")


def test_plans_are_short_ids_are_tokens_and_params_hold_no_control_characters() -> None:
    catalog = Catalog.model_validate(catalog_for("http://127.0.0.1:9"))
    with pytest.raises(PlanRefused, match="the plan has 21 steps; at most 20"):
        check_plan(catalog, [step("checkout", str(i), "note") for i in range(21)],
                   incident_service="checkout")  # fmt: skip
    with pytest.raises(PlanRefused, match=r"version: '1\\n' holds a control character"):
        check_plan(catalog, [step("checkout", "1\n")], incident_service="checkout")
    with pytest.raises(ValidationError, match="saga_id"):
        RemediationProposed(saga_id="saga one", steps=[step("checkout", "1")], mode="auto")
