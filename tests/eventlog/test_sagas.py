"""The remediation read models through the projector into a DuckDB file: a row per saga and
per step as the orchestrator's events tell them, the `remediations` and
`remediation_outcomes` views, the same rows whatever the batches, and an older file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
from nats.js import JetStreamContext

from eventlog.payloads import (
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    SagaCompensated,
    SagaStarted,
    VerificationFailed,
    VerificationPassed,
)
from eventlog.publisher import EventPublisher
from eventlog.replay import replay
from eventlog.sagas import SAGA_STATUSES
from tests.eventlog.projecting import projecting, rows
from tests.eventlog.remediation_story import P99, Teller, remediation_story, rollback
from tests.eventlog.samples import T0
from tests.eventlog.test_investigations import project


def t(minutes: float) -> object:
    return T0 + timedelta(minutes=minutes)


def saga_rows(path: Path) -> dict[str, dict[str, object]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute("SELECT * FROM sagas ORDER BY saga_id")
        names = [d[0] for d in cur.description or []]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


async def test_a_saga_is_one_row_of_how_it_went_and_ended(
    js: JetStreamContext, db_path: Path
) -> None:
    await project(js, db_path, remediation_story())
    sagas = saga_rows(db_path)
    assert {s: r["status"] for s, r in sagas.items()} == {
        "sa-1": "completed", "sb-1": "compensated", "sb-2": "completed", "sc-1": "escalated",
        "sd-1": "rejected", "sd-2": "rejected", "se-1": "completed", "sf-1": "running",
        "sg-1": "compensated",
    }  # fmt: skip
    assert sagas["sa-1"] == {
        "saga_id": "sa-1", "incident_id": "inc-a", "status": "completed",
        "actions": ["rollback_deploy"], "services": ["checkout"], "steps": 1,
        "mode": "approval", "risk": "medium", "rationale": "deploy v2 raised p99",
        "proposed_by": "responder", "dry_run": False, "approved_by": "alice",
        "approved_at": t(2), "rejected_by": None,
        "reason": None, "proposed_at": t(1), "started_at": t(3), "ended_at": t(6.5),
        "steps_succeeded": 1, "failed_step": None, "steps_escalated": 0,
        "verification": "passed", "verification_check": P99, "verification_observed": 0.3,
        "measurements": 2,
    }  # fmt: skip
    sb1 = sagas["sb-1"]
    assert (sb1["actions"], sb1["steps"], sb1["failed_step"], sb1["steps_succeeded"]) == (
        ["rollback_deploy", "scale_up"], 2, 1, 1)  # fmt: skip
    assert (sb1["reason"], sb1["rationale"], sb1["ended_at"]) == ("step 1 failed: quota", None, t(104))  # fmt: skip  # noqa: E501
    assert sb1["proposed_by"] is None  # a proposal of an older Vigil: nobody named
    sc1 = sagas["sc-1"]
    assert (sc1["verification"], sc1["verification_observed"], sc1["steps_escalated"]) == (
        "failed", 2.4, 1)  # fmt: skip
    assert sc1["reason"] == (
        "verification failed: 1 of 1 measurements failed; step 0 not undone after 3 tries of "
        "restore_replicas: 404: no such deployment"
    )
    assert sc1["ended_at"] == t(208)  # the escalation: Vigil can do no more
    sd1, sd2 = sagas["sd-1"], sagas["sd-2"]
    assert (sd1["rejected_by"], sd1["reason"], sd1["started_at"], sd1["ended_at"]) == (
        "bob", "not during the sale", None, t(303))  # fmt: skip
    # refused as it was proposed: only its rejection was ever told
    assert (sd2["actions"], sd2["steps"], sd2["mode"], sd2["proposed_at"], sd2["rejected_by"]) == (
        [], 0, None, None, "policy")  # fmt: skip
    assert (sagas["se-1"]["dry_run"], sagas["se-1"]["verification"]) == (True, None)
    assert (sagas["sf-1"]["started_at"], sagas["sf-1"]["ended_at"]) == (t(502), None)


async def test_a_saga_s_status_after_each_of_its_events(
    js: JetStreamContext, db_path: Path
) -> None:
    """Each event folded in its own batch, read back from the file before the next."""
    told = ("inc-a", "inc-b", "inc-c", "inc-e")
    story = [e for e in remediation_story() if e.incident_id in told]
    seen: list[tuple[str, str, str]] = []
    publisher = EventPublisher(js)
    async with projecting(js, db_path, batch=1) as projector:
        for e in story:
            (ack,) = await publisher.publish_many([e])
            await projector.wait_for(ack.seq)
            saga = getattr(e.data, "saga_id", None)
            if saga is not None:
                query = "SELECT status FROM sagas WHERE saga_id = ?"
                ((status,),) = projector.store.con.execute(query, [saga]).fetchall()
                seen.append((saga, e.type, status))
    by_saga = {s: [(kind, status) for saga, kind, status in seen if saga == s]
               for s in ("sa-1", "sb-1", "sc-1", "se-1")}  # fmt: skip
    assert by_saga["sa-1"] == [
        ("RemediationProposed", "awaiting_approval"), ("RemediationApproved", "approved"),
        ("SagaStarted", "running"), ("SagaStepStarted", "running"),
        ("SagaStepSucceeded", "verifying"), ("VerificationMeasured", "verifying"),
        ("VerificationMeasured", "verifying"), ("VerificationPassed", "verifying"),
        ("SagaCompleted", "completed"),
    ]  # fmt: skip
    assert [status for _, status in by_saga["sb-1"]] == [
        "proposed",
        "running",
        "running",
        "running",  # step 0 done, step 1 still to run
        "running",
        "compensating",
        "compensating",
        "compensating",
        "compensated",
    ]
    assert [status for _, status in by_saga["sc-1"]] == [
        "proposed",
        "running",
        "running",
        "verifying",
        "verifying",
        "compensating",
        *["compensating"] * 6,
        "escalated",  # three tries to undo, then a human's turn
    ]
    assert by_saga["sc-1"][-1] == ("CompensationEscalated", "escalated")
    assert [status for _, status in by_saga["se-1"]] == [
        "proposed", "running", "running", "running", "completed"  # a dry run verifies nothing
    ]  # fmt: skip
    assert {status for _, _, status in seen} <= set(SAGA_STATUSES)


async def test_the_first_of_a_fact_told_twice_counts_as_the_orchestrator_reads_it(
    js: JetStreamContext, db_path: Path
) -> None:
    """responder/saga/progress.py keeps the first start, approval, verdict and failed step; an
    end stays an end, and a rejection after the start changes nothing."""
    told = ("inc-a", "inc-b", "inc-c", "inc-d", "inc-f")
    story = [e for e in remediation_story() if e.incident_id in told]
    again = Teller("inc-a", 0)
    again(7, SagaStarted(saga_id="sa-1", steps=[rollback()], services=["checkout"]))
    again(7, RemediationApproved(saga_id="sa-1", by="bob"))
    again(7, VerificationFailed(saga_id="sa-1", check="later", reason="later"))
    again(7, RemediationRejected(saga_id="sa-1", by="carol", reason="too late"))
    again.ran(7, "sb-1", 0, rollback(), ok=False)
    again(7, VerificationPassed(saga_id="sc-1", check="later"))
    running = Teller("inc-f", 500)
    running(3, RemediationRejected(saga_id="sf-1", by="dan", reason="stop"))  # after its start
    refused = Teller("inc-d", 300)
    refused(5, RemediationRejected(saga_id="sd-1", by="eve", reason="no"))  # rejected already
    await project(js, db_path, story, again.events + running.events + refused.events)
    sagas = saga_rows(db_path)
    sa1 = sagas["sa-1"]
    assert (sa1["started_at"], sa1["approved_by"], sa1["approved_at"]) == (t(3), "alice", t(2))
    assert (sa1["status"], sa1["verification"], sa1["verification_check"]) == (
        "completed", "passed", P99)  # fmt: skip
    assert (sa1["rejected_by"], sa1["reason"], sa1["ended_at"]) == (None, None, t(6.5))
    assert (sagas["sb-1"]["failed_step"], sagas["sb-1"]["reason"]) == (1, "step 1 failed: quota")
    assert (sagas["sc-1"]["verification"], sagas["sc-1"]["verification_check"]) == ("failed", P99)
    assert (sagas["sd-1"]["rejected_by"], sagas["sd-1"]["ended_at"]) == ("bob", t(303))
    sf1 = sagas["sf-1"]
    assert (sf1["status"], sf1["rejected_by"], sf1["ended_at"]) == ("running", None, None)


async def test_saga_steps_keep_the_compensation_and_its_escalation(
    js: JetStreamContext, db_path: Path
) -> None:
    await project(js, db_path, remediation_story())
    found = rows(
        db_path,
        "SELECT saga_id, step, action, status, params->>'to', idempotency_key, error,"
        " compensation_action, compensation_params::VARCHAR, compensation_key,"
        " compensation_attempts, compensated_at FROM saga_steps"
        " WHERE saga_id IN ('sb-1', 'sc-1', 'sf-1') ORDER BY ALL",
    )
    undo = '{"service":"checkout","to":"v2"}'
    assert found == [
        ("sb-1", 0, "rollback_deploy", "compensated", "v1", "sb-1/0/1", None,
         "rollforward_deploy", undo, "sb-1/0/undo/1", 1, t(104)),
        ("sb-1", 1, "scale_up", "failed", None, "sb-1/1/1", "quota", None, None, None, 0, None),
        ("sc-1", 0, "restart", "compensation_escalated", None, "sc-1/0/1",
         "404: no such deployment", "restore_replicas", undo, "sc-1/0/undo/3", 3, None),
        ("sf-1", 0, "rollback_deploy", "started", None, "sf-1/0/1", None, None, None, None, 0,
         None),
    ]  # fmt: skip


async def test_remediations_tell_what_worked_and_what_was_undone(
    js: JetStreamContext, db_path: Path
) -> None:
    await project(js, db_path, remediation_story())
    assert rows(
        db_path,
        "SELECT saga_id, incident_id, service, alert, actions, outcome, verified_by, seconds"
        " FROM remediations ORDER BY saga_id",
    ) == [
        ("sa-1", "inc-a", "checkout", "CheckoutErrors", ["rollback_deploy"], "worked", P99, 210.0),
        ("sb-1", "inc-b", "checkout", "CheckoutErrors", ["rollback_deploy", "scale_up"],
         "compensated", None, 120.0),
        ("sb-2", "inc-b", "checkout", "CheckoutErrors", ["rollback_deploy"], "worked",
         "the alert resolved", 240.0),
        ("sc-1", "inc-c", "checkout", "CheckoutErrors", ["restart"], "escalated", P99, 360.0),
        ("sd-1", "inc-d", "payments", "PaymentsErrors", ["restart"], "rejected", None, None),
        ("sd-2", "inc-d", "payments", "PaymentsErrors", [], "rejected", None, None),
        ("se-1", "inc-e", "checkout", "CheckoutErrors", ["rollback_deploy"], "dry_run", None,
         72.0),
        ("sf-1", "inc-f", "checkout", "CheckoutErrors", ["rollback_deploy"], "in_progress", None,
         None),
        ("sg-1", "inc-g", "checkout", "CheckoutErrors", ["rollback_deploy"], "compensated", P99,
         300.0),
    ]  # fmt: skip
    assert rows(db_path, "SELECT * FROM remediation_outcomes") == [
        ("rollback_deploy", "checkout", 5, 2, 2, 0, 0, 0.5, 225.0, t(602), "compensated"),
        ("restart", "checkout", 1, 0, 0, 1, 0, 0.0, None, t(202), "escalated"),
        ("scale_up", "checkout", 1, 0, 1, 0, 0, 0.0, None, t(102), "compensated"),
        ("restart", "payments", 0, 0, 0, 0, 1, None, None, None, None),
    ]


async def test_the_same_rows_whatever_the_batches(js: JetStreamContext, tmp_path: Path) -> None:
    """One event per batch (each saga read back from the file between events) or all in one."""
    story = remediation_story()
    acks = await EventPublisher(js).publish_many(story)
    one, every = tmp_path / "one.duckdb", tmp_path / "every.duckdb"
    for path, batch in ((one, 1), (every, 1000)):
        async with projecting(js, path, batch=batch) as projector:
            await projector.wait_for(acks[-1].seq)
    for table in ("sagas", "saga_steps", "remediations", "remediation_outcomes"):
        query = f"SELECT * FROM {table} ORDER BY ALL"
        assert rows(one, query) == rows(every, query), table
    assert rows(one, "SELECT count(*) FROM sagas") == [(9,)]


async def test_a_file_of_an_older_vigil_gets_sagas_and_the_compensation_columns(
    js: JetStreamContext, db_path: Path
) -> None:
    """The `sagas` table is made and filled from the saga events the file holds, so past
    remediations are there without a replay; the steps' new columns are NULL (0 tries) for
    what was folded before, and the sagas go on from there."""
    story = remediation_story()
    older = [e for e in story if e.incident_id in ("inc-a", "inc-c")]
    await project(js, db_path, older)
    con = duckdb.connect(str(db_path))  # as the Vigil before sagas made it
    con.execute("DROP VIEW remediation_outcomes; DROP VIEW remediations; DROP TABLE sagas")
    for column in ("compensation_action", "compensation_params", "compensation_key",
                   "compensation_attempts"):  # fmt: skip
        con.execute(f"ALTER TABLE saga_steps DROP COLUMN {column}")
    con.close()
    incidents = rows(db_path, "SELECT * FROM incidents ORDER BY ALL")

    later = Teller("inc-h", 700).alert("checkout")
    later(1, RemediationProposed(saga_id="sh-1", steps=[rollback()], mode="auto"))
    await project(js, db_path, later.events)
    assert rows(db_path, "SELECT saga_id, outcome FROM remediations ORDER BY 1") == [
        ("sa-1", "worked"), ("sc-1", "escalated"), ("sh-1", "in_progress")
    ]  # fmt: skip
    replayed = db_path.with_name("replayed.duckdb")
    await replay(js, replayed)
    query = "SELECT * FROM sagas ORDER BY ALL"
    assert rows(db_path, query) == rows(replayed, query)  # as if it had always kept them
    # nothing else was folded again
    assert rows(db_path, "SELECT * FROM incidents WHERE incident_id <> 'inc-h' ORDER BY ALL") == (
        incidents
    )
    assert rows(
        db_path,
        "SELECT saga_id, status, compensation_action, compensation_attempts FROM saga_steps"
        " WHERE saga_id = 'sc-1'",
    ) == [("sc-1", "compensation_escalated", None, None)]  # folded before the file kept them


async def test_an_older_file_s_sagas_go_on_with_new_events(
    js: JetStreamContext, db_path: Path
) -> None:
    """A step folded before the compensation columns, undone after: its row takes them."""
    before = Teller("inc-h", 0).alert("checkout")
    before(1, RemediationProposed(saga_id="sh-1", steps=[rollback()], mode="auto"))
    before(2, SagaStarted(saga_id="sh-1", steps=[rollback()], services=["checkout"]))
    before.ran(2, "sh-1", 0, rollback())
    await project(js, db_path, before.events)
    con = duckdb.connect(str(db_path))
    con.execute("DROP VIEW remediation_outcomes; DROP VIEW remediations; DROP TABLE sagas")
    con.execute("ALTER TABLE saga_steps DROP COLUMN compensation_attempts")
    con.close()

    after = Teller("inc-h", 0)
    after(4, VerificationFailed(saga_id="sh-1", check=P99, observed=1.0, reason="too slow"))
    after.undo(5, "sh-1", 0, "rollforward_deploy")
    after(6, SagaCompensated(saga_id="sh-1", reason="verification failed: too slow"))
    await project(js, db_path, after.events)
    assert rows(
        db_path,
        "SELECT status, compensation_action, compensation_attempts, started_at FROM saga_steps",
    ) == [("compensated", "rollforward_deploy", 1, t(2))]
    assert rows(db_path, "SELECT status, started_at, ended_at, reason FROM sagas") == [
        ("compensated", t(2), t(6), "verification failed: too slow")
    ]
