"""`vigil up` with an action catalog runs the saga orchestrator among its roles: a plan
proposed from the command line runs, and the read model shows the incident resolved by it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml
from vigil_cli_support import StartUp, run_vigil, vigil_env, wait_projected, watch_events

from eventlog.envelope import new_event
from eventlog.history import incident_events
from eventlog.payloads import AnomalyDetected
from eventlog.publisher import EventPublisher
from eventlog.stream import connect

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


async def test_up_with_a_catalog_runs_a_proposed_plan_to_its_end(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"services": {"search": {"low": "auto"}}}))
    # No investigation: this is about the orchestrator being among the roles.
    up = await vigil_up(data, actions=str(DEPLOY / "actions.yaml"), policy=str(policy),
                        responder_enabled="false")  # fmt: skip
    runtime = await up.up()
    assert any(line.startswith("Sagas  actions ") for line in up.lines), up.lines
    nc = await connect(runtime.nats_url, name="vigil-test")
    try:
        watch = await watch_events(nc)
        fired = AnomalyDetected(origin="alertmanager", name="SearchSlow", fingerprint="f1",
                                starts_at="2026-11-30T08:00:00Z", service="search")  # fmt: skip
        await EventPublisher(nc.jetstream()).publish(
            new_event(fired, incident_id="inc-1", source="test")
        )
        env = vigil_env(data, actions=str(DEPLOY / "actions.yaml"), policy=str(policy))
        done = await run_vigil("propose", "inc-1", "note_in_runbook", "--param", "service=search",
                               "--param", "text=reindex", env=env)  # fmt: skip
        assert done.rc == 0, done.err
        await watch.first(lambda e: e.type == "IncidentResolved")
    finally:
        await nc.close()
    assert [e.type for e in watch.events] == [
        "AnomalyDetected", "RemediationProposed", "SagaStarted", "SagaStepStarted",
        "SagaStepSucceeded", "VerificationPassed", "SagaCompleted", "IncidentResolved",
    ]  # fmt: skip
    await wait_projected(runtime, len(watch.events))  # a new stream: one event, one sequence
    done = await run_vigil("sql", "SELECT status, resolution FROM incidents", "--format", "json",
                           env=vigil_env(data))  # fmt: skip
    assert json.loads(done.out) == [{"status": "resolved", "resolution": "remediation"}]


async def test_up_with_a_wrong_catalog_says_so_in_one_line_before_starting(tmp_path: Path) -> None:
    (tmp_path / "actions.yaml").write_text("actions:\n  - name: Bad Name\n")
    done = await run_vigil("up", env=vigil_env(tmp_path / "data",
                                               actions=str(tmp_path / "actions.yaml")))  # fmt: skip
    assert done.rc == 2 and len(done.err_lines) == 1, done.err
    assert done.err_lines[0].startswith("vigil: ") and "VIGIL_ACTIONS" in done.err
    assert "NATS" not in done.out  # nothing was started


async def test_up_with_remediation_paused_by_setting_starts_no_step(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"services": {"search": {"low": "auto"}}}))
    settings = {"actions": str(DEPLOY / "actions.yaml"), "policy": str(policy)}
    up = await vigil_up(data, responder_enabled="false", remediation_paused="true", **settings)
    runtime = await up.up()
    nc = await connect(runtime.nats_url, name="vigil-test")
    try:
        fired = AnomalyDetected(origin="alertmanager", name="SearchSlow", fingerprint="f1",
                                starts_at="2026-11-30T08:00:00Z", service="search")  # fmt: skip
        await EventPublisher(nc.jetstream()).publish(
            new_event(fired, incident_id="inc-1", source="test")
        )
        done = await run_vigil("propose", "inc-1", "note_in_runbook", "--param", "service=search",
                               env=vigil_env(data, **settings))  # fmt: skip
        assert done.rc == 0, done.err
        js = nc.jetstream()
        async with asyncio.timeout(15):  # the orchestrator has seen the plan and let it be
            while True:
                info = await js.consumer_info("VIGIL_EVENTS", "saga")
                if info.delivered.stream_seq >= 2 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.05)  # consumer state: no event to await
        types = [s.event.type for s in await incident_events(js, "inc-1")]
    finally:
        await nc.close()
    assert types == ["AnomalyDetected", "RemediationProposed"]  # waiting for the pause to lift
