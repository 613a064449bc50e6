"""Remediation history end to end: the saga orchestrator runs real sagas (a real nats-server,
a real Prometheus to verify by, a deployer on loopback), the projector folds what it appended
into a DuckDB file, and similar_incidents tells a later investigation how each one ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from eventlog.projector import Projector
from eventlog.sql_service import serve_sql
from eventlog.store import ProjectionStore
from eventlog.stream import EVENTS_STREAM
from responder.saga.executors import idempotency_key
from responder.saga.proposals import decide
from responder.tools.similar import SimilarArgs, similar_incidents
from tests.detector.prometheus_server import PrometheusServer
from tests.responder.contexts import tool_context
from tests.responder.running import anomaly, append
from tests.responder.saga_target import Deployer
from tests.responder.test_saga_orchestrator import PASSING, VERSIONS, orchestrator, proposed, step


@pytest.fixture
async def deployer() -> AsyncIterator[Deployer]:
    """The deployer on loopback, every service at its first version; `search` refuses."""
    target = Deployer(VERSIONS, failing={"search"})
    async with target.running():
        yield target


async def test_how_each_saga_ended_is_told_to_the_next_investigation(
    js: JetStreamContext,
    nc: NATS,
    db_path: Path,
    deployer: Deployer,
    prometheus: PrometheusServer,
) -> None:
    orch = orchestrator(js, deployer, verify=PASSING, prometheus=prometheus)
    plans = {
        "inc-1": [step("checkout", "1.1")],  # works
        "inc-2": [step("checkout", "1.2"), step("search", "3.1")],  # search refuses: undone
        "inc-3": [step("checkout", "1.3", "flip"), step("search", "3.1")],  # undo fails: escalated
        "inc-4": [step("checkout", "1.4")],  # rejected by bob
    }
    sagas = {}
    for incident, plan in plans.items():
        await append(js, anomaly("checkout", fingerprint=incident), incident)
        mode = "approval" if incident == "inc-4" else None
        sagas[incident] = await proposed(js, orch, plan, mode=mode, incident=incident)
        if incident == "inc-4":
            await decide(js, incident, approve=False, by="bob", reason="not during the sale")
        await orch.advance(incident)

    store = ProjectionStore(db_path)
    last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    await Projector(js, store).catch_up({EVENTS_STREAM: last})
    service = await serve_sql(nc, store.con, store.db_id)
    try:
        ctx = tool_context(nc, datetime.now(UTC), incident_id="inc-now")
        result = await similar_incidents(ctx, SimilarArgs(service="checkout"))
        outcomes = store.con.execute("SELECT * FROM remediation_outcomes").fetchall()
        steps = store.con.execute(
            "SELECT saga_id, step, status, compensation_action, compensation_params,"
            " compensation_key, compensation_attempts FROM saga_steps"
            " WHERE status NOT IN ('succeeded', 'failed') ORDER BY saga_id, step"
        ).fetchall()
    finally:
        await service.stop()
        store.close()

    found = {i["incident_id"]: i for i in result["incidents"]}
    assert list(found) == ["inc-4", "inc-3", "inc-2", "inc-1"]  # newest first
    told = {incident: i["remediations"] for incident, i in found.items()}
    assert all(len(r) == 1 and r[0]["saga_id"] == sagas[i] for i, r in told.items())
    (worked,), (undone,), (escalated,), (rejected,) = (told[f"inc-{n}"] for n in range(1, 5))
    assert (worked["actions"], worked["services"], worked["outcome"]) == (
        ["set_version"], ["checkout"], "worked")  # fmt: skip
    assert (worked["verified_by"], worked["observed"], worked["reason"]) == (
        "vector(0) result == 0", 0.0, None)  # fmt: skip
    assert worked["minutes"] is not None and worked["minutes"] >= 0
    assert (found["inc-1"]["status"], found["inc-1"]["resolution"]) == ("resolved", "remediation")
    assert (undone["outcome"], undone["services"]) == ("compensated", ["checkout", "search"])
    assert undone["reason"].startswith("step 1 failed: 422: ")
    assert escalated["outcome"] == "escalated"
    assert "step 0 not undone after 3 tries of unflip: 404" in escalated["reason"]
    assert (rejected["outcome"], rejected["reason"], rejected["services"]) == (
        "rejected", "not during the sale", [])  # fmt: skip

    # tried, worked, compensated, escalated, rejected: a saga counts for each of its actions
    by_action = {(row[0], row[1]): row[2:7] for row in outcomes}
    assert by_action == {
        ("set_version", "checkout"): (3, 1, 1, 1, 1),
        ("flip", "checkout"): (1, 0, 0, 1, 0),
    }
    undo_2 = idempotency_key(sagas["inc-2"], 0, 1, undo=True)
    assert [(s, i, status, action, orjson.loads(params), key, tries)
            for s, i, status, action, params, key, tries in steps] == sorted([
        (sagas["inc-2"], 0, "compensated", "set_version",
         {"service": "checkout", "version": "1.1"}, undo_2, 1),  # back to inc-1's version
        (sagas["inc-3"], 0, "compensation_escalated", "unflip",
         {"service": "checkout", "version": "x"}, idempotency_key(sagas["inc-3"], 0, 3, undo=True),
         3),
    ])  # fmt: skip
