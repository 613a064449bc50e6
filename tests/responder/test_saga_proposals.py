"""Proposals on a real nats-server: the policy's mode recorded with the plan, the stricter one
when asked for, and a refused plan recorded as refused by `policy`, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from eventlog.history import incident_events
from eventlog.payloads import (
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
)
from responder.attempts import NoSuchIncident
from responder.saga.catalog import load_catalog
from responder.saga.pause import control_bucket, read_pause
from responder.saga.policy import load_policy
from responder.saga.proposals import propose
from tests.responder.running import anomaly, append
from tests.vigil.vigil_cli_support import run_vigil, vigil_env
from vigil.broker import EmbeddedNats

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CATALOG = load_catalog(DEPLOY / "actions.yaml")
POLICY = load_policy(DEPLOY / "policy.yaml")


def rollback(service: str = "checkout") -> RemediationAction:
    return RemediationAction(action="rollback_deploy", params={"service": service})


async def recorded(js: JetStreamContext) -> list[RemediationProposed | RemediationRejected]:
    kinds = (RemediationProposed, RemediationRejected)
    return [s.event.data for s in await incident_events(js, "inc-1")
            if isinstance(s.event.data, kinds)]  # fmt: skip


async def test_a_plan_gets_the_policys_mode_or_a_stricter_one(js: JetStreamContext) -> None:
    await append(js, anomaly("checkout"))
    auto = await propose(js, "inc-1", [rollback()], catalog=CATALOG, policy=POLICY, by="ana")
    asked = await propose(js, "inc-1", [rollback()], catalog=CATALOG, policy=POLICY, by="ana",
                          mode="approval")  # fmt: skip
    freed = await propose(js, "inc-1", [rollback()], catalog=CATALOG, policy=POLICY, by="ana",
                          mode="auto")  # fmt: skip
    medium = RemediationAction(action="deploy_version", params={"service": "search",
                                                                "version": "2"})  # fmt: skip
    mixed = await propose(js, "inc-1", [rollback(), medium], catalog=CATALOG, policy=POLICY,
                          by="ana")  # fmt: skip
    modes = [p.accepted.mode if p.accepted else None for p in (auto, asked, freed, mixed)]
    # checkout: low is auto; search: medium is auto too; but asking for approval is heard.
    assert modes == ["auto", "approval", "auto", "auto"]
    assert auto.accepted and auto.accepted.steps[0].compensation == "deploy_version"
    assert mixed.accepted and mixed.accepted.risk == "medium"
    assert [r.saga_id for r in await recorded(js)] == [
        p.saga_id for p in (auto, asked, freed, mixed)
    ]
    assert len({p.saga_id for p in (auto, asked, freed, mixed)}) == 4


async def test_an_unknown_service_waits_for_approval(js: JetStreamContext) -> None:
    await append(js, anomaly("ledger"))
    note = RemediationAction(action="note_in_runbook", params={"service": "ledger"})
    done = await propose(js, "inc-1", [note], catalog=CATALOG, policy=POLICY, by="ana")
    assert done.accepted is not None and done.accepted.mode == "approval"


async def test_a_refused_plan_is_recorded_as_refused_by_policy(js: JetStreamContext) -> None:
    await append(js, anomaly("checkout"))
    wider = await propose(js, "inc-1", [rollback("payments")], catalog=CATALOG, policy=POLICY,
                          by="model")  # fmt: skip
    assert wider.accepted is None and wider.refused is not None
    (fact,) = await recorded(js)
    assert fact == wider.refused and fact.by == "policy"
    assert fact.reason == (
        "step 0 ('rollback_deploy'): service='payments' is outside the incident's service "
        "(checkout)"
    )
    with pytest.raises(NoSuchIncident, match="no incident 'inc-9'"):
        await propose(js, "inc-9", [rollback()], catalog=CATALOG, policy=POLICY, by="ana")


async def test_vigil_propose_records_a_one_step_plan_or_says_why_not(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    await append(js, anomaly("checkout"))
    env = vigil_env(tmp_path, nats_url=nats_server.url, actions=str(DEPLOY / "actions.yaml"),
                    policy=str(DEPLOY / "policy.yaml"))  # fmt: skip
    done = await run_vigil("propose", "inc-1", "rollback_deploy", "--param", "service=checkout",
                           "--by", "ana", env=env)  # fmt: skip
    assert done.rc == 0, done.err
    assert done.out.strip().endswith("proposed (auto)")
    wider = await run_vigil("propose", "inc-1", "rollback_deploy", "--param", "service=payments",
                            env=env)  # fmt: skip
    assert wider.rc == 2 and wider.err_lines[0].startswith(
        "vigil: refused: step 0 ('rollback_deploy'): service='payments' is outside"
    ), wider.err
    bad = await run_vigil("propose", "inc-1", "rollback_deploy", "--param", "service", env=env)
    assert bad.rc == 2 and bad.err_lines == ["vigil: --param 'service': write KEY=VALUE"]
    facts = await recorded(js)
    assert [type(f).__name__ for f in facts] == ["RemediationProposed", "RemediationRejected"]
    assert isinstance(facts[0], RemediationProposed) and facts[0].rationale == "proposed by ana"
    none = vigil_env(tmp_path, nats_url=nats_server.url)
    unset = await run_vigil("propose", "inc-1", "rollback_deploy", env=none)
    assert unset.err_lines == [
        "vigil: no action catalog: set VIGIL_ACTIONS (sample: deploy/actions.yaml)"
    ]


async def test_vigil_approve_and_reject_decide_the_plan_that_awaits_approval(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    await append(js, anomaly("payments"))  # payments: every risk waits for approval
    env = vigil_env(tmp_path, nats_url=nats_server.url)
    nothing = await run_vigil("approve", "inc-1", env=env)
    assert nothing.rc == 2 and nothing.err_lines == [
        "vigil: no plan of incident inc-1 awaits approval"
    ]
    unknown = await run_vigil("reject", "inc-9", env=env)
    assert unknown.err_lines == ["vigil: no incident 'inc-9': no anomaly was recorded for it"]
    restart = RemediationAction(action="restart_service", params={"service": "payments"})
    one = await propose(js, "inc-1", [restart], catalog=CATALOG, policy=POLICY, by="ana")
    two = await propose(js, "inc-1", [restart], catalog=CATALOG, policy=POLICY, by="ana")
    several = await run_vigil("approve", "inc-1", env=env)
    assert several.err_lines == [
        f"vigil: several plans await approval ({one.saga_id}, {two.saga_id}): name one"
    ]
    approved = await run_vigil("approve", "inc-1", "--saga", one.saga_id, "--by", "ana",
                               "--comment", "ok after the call", env=env)  # fmt: skip
    assert approved.rc == 0 and approved.out.strip() == (
        f"incident inc-1: {one.saga_id} approved by ana"
    )
    rejected = await run_vigil("reject", "inc-1", "--reason", "one is enough", "--by", "bob",
                               env=env)  # fmt: skip
    assert rejected.out.strip() == f"incident inc-1: {two.saga_id} rejected by bob"
    again = await run_vigil("approve", "inc-1", "--saga", two.saga_id, env=env)
    assert again.err_lines == [f"vigil: {two.saga_id} of incident inc-1 awaits no approval"]
    decided = [s.event.data for s in await incident_events(js, "inc-1")
               if isinstance(s.event.data, RemediationApproved | RemediationRejected)]  # fmt: skip
    assert decided == [
        RemediationApproved(saga_id=one.saga_id, by="ana", comment="ok after the call"),
        RemediationRejected(saga_id=two.saga_id, by="bob", reason="one is enough"),
    ]


async def test_vigil_pause_and_resume_set_the_switch_with_who_and_why(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    env = vigil_env(tmp_path, nats_url=nats_server.url)
    paused = await run_vigil("pause", "--reason", "db migration", "--by", "ana", env=env)
    assert paused.rc == 0 and paused.out.strip() == (
        "remediation paused: no new step starts (a running step finishes); by ana"
    )
    switch = await read_pause(await control_bucket(js))
    assert switch is not None and (switch.paused, switch.by, switch.reason) == (
        True, "ana", "db migration"
    )  # fmt: skip
    resumed = await run_vigil("resume", "--by", "bob", env=env)
    assert resumed.out.strip() == "remediation resumed; by bob"
    switch = await read_pause(await control_bucket(js))
    assert switch is not None and not switch.paused and switch.by == "bob"


async def test_vigil_saga_says_what_it_needs_in_one_line(tmp_path: Path) -> None:
    no_nats = await run_vigil("saga", env=vigil_env(tmp_path))
    assert no_nats.err_lines == [
        "vigil: VIGIL_NATS_URL is required: the orchestrator joins an existing NATS"
    ]
    no_catalog = await run_vigil("saga", env=vigil_env(tmp_path, nats_url="nats://127.0.0.1:9"))
    assert no_catalog.err_lines == [
        "vigil: no action catalog: set VIGIL_ACTIONS (sample: deploy/actions.yaml)"
    ]
    (tmp_path / "bad.yaml").write_text("actions: [{name: x}]\n")
    bad = await run_vigil("saga", env=vigil_env(tmp_path, nats_url="nats://127.0.0.1:9",
                                                actions=str(tmp_path / "bad.yaml")))  # fmt: skip
    assert bad.rc == 2 and len(bad.err_lines) == 1 and "VIGIL_ACTIONS" in bad.err


async def test_the_cli_refuses_odd_ids_names_and_params_in_one_line(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    await append(js, anomaly("checkout"))
    env = vigil_env(tmp_path, nats_url=nats_server.url, actions=str(DEPLOY / "actions.yaml"),
                    policy=str(DEPLOY / "policy.yaml"))  # fmt: skip
    said = {}
    for args in (
        ("propose", "", "rollback_deploy"),
        ("propose", "inc 1", "rollback_deploy"),
        ("propose", "inc-1", ""),
        ("propose", "inc-1", "rollback_deploy", "--param", "service=a", "--param", "service=b"),
        ("approve", ">"),
        ("reject", "inc-1", "--saga", ""),
    ):
        done = await run_vigil(*args, env=env)
        assert done.rc == 2 and len(done.err_lines) == 1, done.err
        said[args[0] + " " + args[1]] = done.err_lines[0]
    assert said == {
        "propose ": "vigil: incident '': not an incident id (letters, digits, _ and -)",
        "propose inc 1": "vigil: incident 'inc 1': not an incident id (letters, digits, _ and -)",
        "propose inc-1": "vigil: --param service: given twice",
        "approve >": "vigil: incident '>': not an incident id (letters, digits, _ and -)",
        "reject inc-1": "vigil: --saga '': not a saga id (letters, digits, _ and -)",
    }  # (the empty action's line is below: it shares the key with the twice-given param)
    empty = await run_vigil("propose", "inc-1", "", env=env)
    assert empty.err_lines == ["vigil: action '': not an action's name (a-z, 0-9, _)"]
    assert [e.event.type for e in await incident_events(js, "inc-1")] == ["AnomalyDetected"]
