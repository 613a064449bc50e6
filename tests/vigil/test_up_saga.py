"""`vigil up` with an action catalog runs the saga orchestrator among its roles: a plan
proposed from the command line runs, and the read model shows the incident resolved by it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml
from nats.aio.client import Client as NATS
from vigil_cli_support import StartUp, run_vigil, vigil_env, wait_projected, watch_events

from eventlog.envelope import new_event
from eventlog.history import incident_events
from eventlog.payloads import AnomalyDetected
from eventlog.publisher import EventPublisher
from eventlog.stream import connect

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def remediation(tmp_path: Path) -> dict[str, str]:
    """The sample catalog, and a policy that lets a low-risk action on search run on its own."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"services": {"search": {"low": "auto"}}}))
    return {"actions": str(DEPLOY / "actions.yaml"), "policy": str(policy)}


async def note_for_search(nc: NATS, data: Path, settings: dict[str, str]) -> None:
    """An alert on search, then `vigil propose` of a note (a noop) for it."""
    fired = AnomalyDetected(origin="alertmanager", name="SearchSlow", fingerprint="f1",
                            starts_at="2026-11-30T08:00:00Z", service="search")  # fmt: skip
    await EventPublisher(nc.jetstream()).publish(new_event(fired, incident_id="inc-1", source="t"))
    done = await run_vigil("propose", "inc-1", "note_in_runbook", "--param", "service=search",
                           "--param", "text=reindex", env=vigil_env(data, **settings))  # fmt: skip
    assert done.rc == 0, done.err


async def test_up_with_a_catalog_runs_a_proposed_plan_to_its_end(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    data, settings = tmp_path / "data", remediation(tmp_path)
    # No investigation: this is about the orchestrator being among the roles.
    up = await vigil_up(data, responder_enabled="false", **settings)
    runtime = await up.up()
    assert any(line.startswith("Sagas  actions ") for line in up.lines), up.lines
    nc = await connect(runtime.nats_url, name="vigil-test")
    try:
        watch = await watch_events(nc)
        await note_for_search(nc, data, settings)
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
    data, settings = tmp_path / "data", remediation(tmp_path)
    up = await vigil_up(data, responder_enabled="false", remediation_paused="true", **settings)
    runtime = await up.up()
    nc = await connect(runtime.nats_url, name="vigil-test")
    try:
        await note_for_search(nc, data, settings)
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
