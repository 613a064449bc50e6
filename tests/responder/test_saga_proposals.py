"""Proposals on a real nats-server: the policy's mode recorded with the plan, the stricter one
when asked for, and a refused plan recorded as refused by `policy`, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from eventlog.history import incident_events
from eventlog.payloads import RemediationAction, RemediationProposed, RemediationRejected
from responder.attempts import NoSuchIncident
from responder.saga.catalog import load_catalog
from responder.saga.policy import load_policy
from responder.saga.proposals import propose
from tests.responder.running import anomaly, append
from tests.vigil.vigil_cli_support import run_vigil, vigil_env
from vigil.broker import EmbeddedNats

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CATALOG = load_catalog(DEPLOY / "actions.yaml")
POLICY = load_policy(DEPLOY / "policy.yaml")


def rollback(service: str = "checkout") -> RemediationAction:
    return RemediationAction(action="rollback_deploy", params={"service": service, "version": "1"})


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
                           "--param", "version=1.4.0", "--by", "ana", env=env)  # fmt: skip
    assert done.rc == 0, done.err
    assert done.out.strip().endswith("proposed (auto)")
    wider = await run_vigil("propose", "inc-1", "rollback_deploy", "--param", "service=payments",
                            "--param", "version=1.4.0", env=env)  # fmt: skip
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
