"""similar_incidents on a real nats-server and a real projector: incidents and their
remediations folded from events into a DuckDB file, read through the SQL service's well-known
subject."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import ValidationError

from eventlog.envelope import new_event
from eventlog.payloads import (
    AnomalyDetected,
    CompensationStarted,
    CompensationSucceeded,
    IncidentResolved,
    Payload,
    RemediationAction,
    RemediationProposed,
    RemediationRejected,
    RootCauseConcluded,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
    SagaStepStarted,
    SagaStepSucceeded,
    VerificationFailed,
    VerificationPassed,
)
from eventlog.payloads.investigation import Hypothesis, RootCauseReport
from eventlog.projector import Projector
from eventlog.publisher import EventPublisher
from eventlog.sql import SqlError
from eventlog.sql_service import serve_sql
from eventlog.store import ProjectionStore
from eventlog.stream import EVENTS_STREAM
from responder.tools.similar import SimilarArgs, similar_incidents
from tests.responder.contexts import tool_context

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return NOW + timedelta(hours=hours)


def fired(name: str, service: str, fingerprint: str) -> AnomalyDetected:
    return AnomalyDetected(origin="alertmanager", name=name, fingerprint=fingerprint,
                           starts_at=NOW, service=service, severity="critical")  # fmt: skip


ROLLBACK = RemediationAction(action="rollback_deploy", params={"service": "checkout"},
                             compensation="rollforward_deploy")  # fmt: skip
RESTART = RemediationAction(action="restart", params={"service": "checkout"})
P99 = "p99 < 0.5s"


def saga(saga_id: str, step: RemediationAction, start: float) -> list[tuple[float, Payload]]:
    """Proposed at `start` (hours from NOW), started 3 minutes later, its step done at once."""
    began = start + 0.05
    return [
        (start, RemediationProposed(saga_id=saga_id, steps=[step], mode="auto")),
        (began, SagaStarted(saga_id=saga_id, steps=[step], services=["checkout"])),
        (began, SagaStepStarted(saga_id=saga_id, step=0, action=step.action,
                                idempotency_key=f"{saga_id}/0/1")),
        (began, SagaStepSucceeded(saga_id=saga_id, step=0, action=step.action)),
    ]  # fmt: skip


UNDONE = [  # inc-a's first try: a restart that did not help, undone 3 minutes after it began
    *saga("sa-restart", RESTART, -71.9),
    (-71.82, VerificationFailed(saga_id="sa-restart", check=P99, observed=2.1,
                                reason="p99 stayed high")),
    (-71.81, CompensationStarted(saga_id="sa-restart", step=0, action="restart")),
    (-71.8, CompensationSucceeded(saga_id="sa-restart", step=0, action="restart")),
    (-71.8, SagaCompensated(saga_id="sa-restart", reason="verification failed: p99 stayed high")),
]  # fmt: skip
WORKED = [  # inc-a's second: the rollback, verified 6 minutes after it began
    *saga("sa-rollback", ROLLBACK, -71.75),
    (-71.6, VerificationPassed(saga_id="sa-rollback", check=P99, observed=0.31)),
    (-71.6, SagaCompleted(saga_id="sa-rollback")),
]
LATE = [  # inc-e's: running at now, completed after it; and one proposed after now
    *saga("se-rollback", ROLLBACK, -1),
    (1, VerificationPassed(saga_id="se-rollback", check=P99, observed=0.2)),
    (1, SagaCompleted(saga_id="se-rollback")),
    (1.5, RemediationProposed(saga_id="se-later", steps=[RESTART], mode="auto")),
]
REJECTED = [(-35, RemediationRejected(saga_id="sc-no", by="bob", reason="not in the sale"))]

STORY: list[tuple[str, float, Payload]] = [  # incident, when (hours from NOW), fact
    ("inc-a", -72, fired("CheckoutErrors", "checkout", "a")),
    (
        "inc-a",
        -71.9,
        RootCauseConcluded(
            report=RootCauseReport(
                summary="v42 broke checkout",
                hypotheses=[
                    Hypothesis(
                        category="deploy_or_config_change",
                        service="checkout",
                        confidence=0.8,
                        explanation="errors after v42",
                    )
                ],
            )
        ),
    ),
    *[("inc-a", hours, fact) for hours, fact in UNDONE + WORKED],
    ("inc-a", -71.5, IncidentResolved(how="remediation", by="alice")),
    ("inc-b", -48, fired("SearchSlow", "search", "b1")),
    ("inc-b", -47.9, fired("CheckoutErrors", "search", "b2")),  # not its first alert
    ("inc-c", -36, fired("PaymentsDown", "payments", "c")),
    *[("inc-c", hours, fact) for hours, fact in REJECTED],
    ("inc-e", -24, fired("CheckoutErrors", "checkout", "e")),
    *[("inc-e", hours, fact) for hours, fact in LATE],
    ("inc-e", 2, IncidentResolved(how="alert_resolved")),  # after now: not known at now
    ("inc-q", -12, fired("it's down", "o'brien", "q")),
    ("inc-now", -0.1, fired("CheckoutErrors", "checkout", "n")),  # the one investigated
    ("inc-d", 1, fired("CheckoutErrors", "checkout", "d")),  # opened after now
]


@contextlib.asynccontextmanager
async def serving_story(
    js: JetStreamContext, nc: NATS, db_path: Path, *, without: str = ""
) -> AsyncIterator[None]:
    """STORY projected into a DuckDB file, its SQL service answering on the bus; `without`:
    views to drop first (a read model served by an older Vigil)."""
    events = [new_event(fact, incident_id=incident, source="test", occurred_at=at(hours))
              for incident, hours, fact in STORY]  # fmt: skip
    await EventPublisher(js).publish_many(events)
    store = ProjectionStore(db_path)
    last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    await Projector(js, store).catch_up({EVENTS_STREAM: last})
    for view in filter(None, without.split(",")):
        store.con.execute(f"DROP VIEW {view}")
    service = await serve_sql(nc, store.con, store.db_id)
    try:
        yield
    finally:
        await service.stop()
        store.close()


@pytest.fixture
async def read_model(js: JetStreamContext, nc: NATS, db_path: Path) -> AsyncIterator[None]:
    """STORY projected into a DuckDB file, its SQL service answering on the bus."""
    async with serving_story(js, nc, db_path):
        yield


async def similar(nc: NATS, **args: Any) -> dict[str, Any]:
    ctx = tool_context(nc, NOW, incident_id="inc-now")
    return await similar_incidents(ctx, SimilarArgs(**args))


async def test_same_alert_or_service_newest_first_with_how_they_ended(
    nc: NATS, read_model: None
) -> None:
    result = await similar(nc, service="checkout", alert="CheckoutErrors")
    found = result["incidents"]
    assert [i["incident_id"] for i in found] == ["inc-e", "inc-b", "inc-a"]
    assert [i["matched"] for i in found] == [["service", "alert"], ["alert"],
                                             ["service", "alert"]]  # fmt: skip
    remediated = found[2]
    assert {k: remediated[k] for k in (
        "title", "service", "status", "resolution", "root_cause", "root_cause_confidence",
        "root_cause_service", "root_cause_summary", "minutes_to_resolve")} == {
        "title": "CheckoutErrors", "service": "checkout", "status": "resolved",
        "resolution": "remediation", "root_cause": "deploy_or_config_change",
        "root_cause_confidence": 0.8, "root_cause_service": "checkout",
        "root_cause_summary": "v42 broke checkout", "minutes_to_resolve": 30.0,
    }  # fmt: skip
    assert datetime.fromisoformat(remediated["opened_at"]) == at(-72)
    resolved_later = found[0]  # its end is after the investigation's now
    assert (resolved_later["status"], resolved_later["resolved_at"]) == ("open", None)
    assert resolved_later["resolution"] is None and "minutes_to_resolve" not in resolved_later
    assert found[1]["title"] == "SearchSlow" and result["more"] is False


async def test_each_incident_tells_its_remediations_and_how_they_ended(
    nc: NATS, read_model: None
) -> None:
    result = await similar(nc, service="checkout", alert="CheckoutErrors")
    tried = {i["incident_id"]: i["remediations"] for i in result["incidents"]}
    assert tried["inc-a"] == [
        {"saga_id": "sa-restart", "actions": ["restart"], "services": ["checkout"],
         "outcome": "compensated", "reason": "verification failed: p99 stayed high",
         "verified_by": P99, "observed": 2.1, "minutes": 3.0},
        {"saga_id": "sa-rollback", "actions": ["rollback_deploy"], "services": ["checkout"],
         "outcome": "worked", "reason": None, "verified_by": P99, "observed": 0.31,
         "minutes": 6.0},
    ]  # fmt: skip
    # its end is after the investigation's now: still running then; the later one unknown then
    assert tried["inc-e"] == [
        {"saga_id": "se-rollback", "actions": ["rollback_deploy"], "services": ["checkout"],
         "outcome": "in_progress", "reason": None, "verified_by": None, "observed": None,
         "minutes": None},
    ]  # fmt: skip
    assert tried["inc-b"] == []  # nothing tried
    payments = await similar(nc, service="payments")
    assert payments["incidents"][0]["remediations"] == [
        {"saga_id": "sc-no", "actions": [], "services": [], "outcome": "rejected",
         "reason": "not in the sale", "verified_by": None, "observed": None, "minutes": None},
    ]  # fmt: skip


async def test_a_read_model_without_remediations_tells_the_incidents_alone(
    js: JetStreamContext, nc: NATS, db_path: Path
) -> None:
    """Served by a Vigil older than the `remediations` view: not known, so not told."""
    async with serving_story(js, nc, db_path, without="remediation_outcomes,remediations"):
        result = await similar(nc, service="checkout", alert="CheckoutErrors")
    found = result["incidents"]
    assert [i["incident_id"] for i in found] == ["inc-e", "inc-b", "inc-a"]
    assert not any("remediations" in i for i in found)
    assert found[2]["root_cause"] == "deploy_or_config_change"


async def test_a_limit_and_one_criterion(nc: NATS, read_model: None) -> None:
    two = await similar(nc, alert="CheckoutErrors", limit=2)
    assert [i["incident_id"] for i in two["incidents"]] == ["inc-e", "inc-b"] and two["more"]
    payments = await similar(nc, service="payments")
    assert [i["incident_id"] for i in payments["incidents"]] == ["inc-c"]
    assert payments["incidents"][0]["root_cause"] is None


async def test_values_are_only_ever_values(nc: NATS, read_model: None) -> None:
    quoted = await similar(nc, service="o'brien", alert="it's down")
    assert [i["incident_id"] for i in quoted["incidents"]] == ["inc-q"]
    hostile = await similar(nc, service="x' OR '1'='1", alert="' OR true OR '")
    assert hostile == {"incidents": [], "more": False}


async def test_no_read_model_answering(nc: NATS) -> None:
    with pytest.raises(SqlError, match=r"^no read model answers on vigil\.sql\.read"):
        await similar(nc, service="checkout")


def test_something_to_match_is_required() -> None:
    with pytest.raises(ValidationError, match="give service or alert"):
        SimilarArgs()
