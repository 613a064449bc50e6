"""The commands of /api/v1 against a real nats-server: each checked against the stream's state,
recorded as its fact (by the token's name), and refused with a 4xx that says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import SecretStr

from api.auth import ApiToken
from eventlog.history import incident_events, read_events
from eventlog.payloads import (
    IncidentResolved,
    RemediationAction,
    RemediationApproved,
    RemediationRejected,
)
from responder.saga.pause import control_bucket, read_pause
from responder.saga.proposals import propose
from tests.api.serving import AS_ANA, AS_ROB, TOKENS, api
from tests.eventlog.samples import concluded
from tests.responder.running import anomaly, append
from tests.responder.test_saga_proposals import CATALOG, POLICY
from vigil.broker import EmbeddedNats

RESTART = RemediationAction(action="restart_service", params={"service": "payments"})


@pytest.fixture
async def client(nc: NATS, js: JetStreamContext) -> AsyncIterator[httpx.AsyncClient]:
    async with api(nc) as c:
        yield c


async def proposed(js: JetStreamContext, incident: str = "inc-1") -> str:
    """A plan of the payments incident, which waits for approval (the policy's default)."""
    plan = await propose(js, incident, [RESTART], catalog=CATALOG, policy=POLICY, by="model")
    assert plan.accepted is not None and plan.accepted.mode == "approval"
    return plan.saga_id


async def on_stream(js: JetStreamContext, answer: httpx.Response) -> None:
    """The answer's event is on the stream, at the sequence the answer gives, as answered."""
    told = answer.json()["event"]
    stored = {str(s.event.id): s for s in await incident_events(js, told["incident_id"])}
    assert told["id"] in stored, "the answer names an event the stream does not hold"
    held = stored[told["id"]]
    assert held.seq == told["seq"] and held.event.type == told["type"]
    assert held.event.data.model_dump(mode="json") == told["data"]


async def test_approve_records_the_approval_by_the_tokens_name(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    saga = await proposed(js)
    answer = await client.post("/api/v1/incidents/inc-1/approve", json={"comment": "go"},
                               headers=AS_ANA)  # fmt: skip
    assert answer.status_code == 200, answer.text
    event = answer.json()["event"]
    assert (event["type"], event["incident_id"], event["data"]) == (
        "RemediationApproved", "inc-1", {"saga_id": saga, "by": "ana", "comment": "go"}
    )  # fmt: skip
    await on_stream(js, answer)
    again = await client.post("/api/v1/incidents/inc-1/approve", json={}, headers=AS_ANA)
    assert again.status_code == 409
    assert again.json() == {"detail": "no plan of incident inc-1 awaits approval"}


async def test_reject_names_the_saga_when_several_wait(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    one, two = await proposed(js), await proposed(js)
    several = await client.post("/api/v1/incidents/inc-1/reject", json={}, headers=AS_ANA)
    assert several.status_code == 409
    assert several.json()["detail"] == f"several plans await approval ({one}, {two}): name one"
    answer = await client.post("/api/v1/incidents/inc-1/reject",
                               json={"saga_id": two, "reason": "one is enough"},
                               headers=AS_ANA)  # fmt: skip
    assert answer.status_code == 200, answer.text
    await on_stream(js, answer)
    decided = [s.event.data for s in await incident_events(js, "inc-1")
               if isinstance(s.event.data, RemediationApproved | RemediationRejected)]  # fmt: skip
    assert decided == [RemediationRejected(saga_id=two, by="ana", reason="one is enough")]
    gone = await client.post("/api/v1/incidents/inc-1/approve", json={"saga_id": two},
                             headers=AS_ANA)  # fmt: skip
    assert gone.json() == {"detail": f"{two} of incident inc-1 awaits no approval"}


BEA = "bea-operate-token-000002"
AS_BEA = {"Authorization": f"Bearer {BEA}"}
WITH_BEA = [*TOKENS, ApiToken(name="bea", scope="operate", token=SecretStr(BEA))]


@pytest.mark.parametrize("second", ["approve", "reject"])
async def test_two_decisions_at_once_record_one_and_refuse_the_other(
    nc: NATS, js: JetStreamContext, second: str
) -> None:
    # Both requests read the plan as awaiting before either records: without the
    # compare-and-set on the incident's subjects, both were recorded and both answered 200.
    async with api(nc, tokens=WITH_BEA) as c:
        for n in range(4):
            incident = f"inc-race{n}"
            await append(js, anomaly("payments"), incident)
            saga = await proposed(js, incident)
            path = f"/api/v1/incidents/{incident}"
            ana, bea = await asyncio.gather(
                c.post(f"{path}/approve", json={"saga_id": saga}, headers=AS_ANA),
                c.post(f"{path}/{second}", json={"saga_id": saga}, headers=AS_BEA),
            )
            assert sorted([ana.status_code, bea.status_code]) == [200, 409], (ana, bea)
            won = ana if ana.status_code == 200 else bea
            await on_stream(js, won)  # the answer tells who decided, as the stream holds it
            decisions = [
                s.event.data for s in await incident_events(js, incident)
                if isinstance(s.event.data, RemediationApproved | RemediationRejected)
            ]  # fmt: skip
            assert len(decisions) == 1
            assert decisions[0].by == ("ana" if won is ana else "bea")


async def test_an_expired_plan_awaits_no_approval(nc: NATS, js: JetStreamContext) -> None:
    """The expiry is the context's (the policy file's, in `vigil api`)."""
    await append(js, anomaly("payments"))
    await proposed(js)
    async with api(nc, approval_expiry=timedelta(microseconds=1)) as c:
        late = await c.post("/api/v1/incidents/inc-1/approve", json={}, headers=AS_ANA)
    assert late.status_code == 409, late.text
    assert late.json()["detail"] == "no plan of incident inc-1 awaits approval"


async def test_commands_on_an_unknown_incident_are_404(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    for verb in ("approve", "reject", "acknowledge", "investigate"):
        answer = await client.post(f"/api/v1/incidents/inc-9/{verb}", json={}, headers=AS_ANA)
        assert answer.status_code == 404, (verb, answer.text)
        assert answer.json() == {"detail": "no incident 'inc-9': no anomaly was recorded for it"}
    assert [s.event.type for s in await read_events(js, ["vigil.evt.>"])] == ["AnomalyDetected"]


async def test_a_read_token_may_not_command_and_no_token_is_asked_for(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    await proposed(js)
    posts = [
        ("/api/v1/incidents/inc-1/approve", {}), ("/api/v1/incidents/inc-1/reject", {}),
        ("/api/v1/incidents/inc-1/acknowledge", {}), ("/api/v1/incidents/inc-1/investigate", {}),
        ("/api/v1/changes", {"service": "api"}), ("/api/v1/remediation/pause", {}),
        ("/api/v1/remediation/resume", {}),
    ]  # fmt: skip
    for url, body in posts:
        refused = await client.post(url, json=body, headers=AS_ROB)
        assert refused.status_code == 403, (url, refused.text)
        assert refused.json() == {"detail": "token 'rob' has scope read; this needs operate"}
        anonymous = await client.post(url, json=body)
        assert anonymous.status_code == 401 and "bearer token" in anonymous.json()["detail"]
    types = [s.event.type for s in await incident_events(js, "inc-1")]
    assert types == ["AnomalyDetected", "RemediationProposed"]
    assert await read_pause(await control_bucket(js)) is None


@pytest.mark.parametrize(
    ("url", "body", "detail"),
    [
        ("/api/v1/incidents/inc-1/approve", {"saga_id": "a b"},
         "body.saga_id: String should match pattern '^[A-Za-z0-9_-]{1,64}$'"),
        ("/api/v1/incidents/inc-1/approve", {"by": "mallory"},
         "body.by: Extra inputs are not permitted"),
        ("/api/v1/incidents/inc-1/reject", {"reason": "x" * 2001},
         "body.reason: String should have at most 2000 characters"),
        ("/api/v1/incidents/inc-1/acknowledge", {"comment": 7},
         "body.comment: Input should be a valid string"),
        ("/api/v1/incidents/inc-1/investigate", {"supersede": "true"},
         "body.supersede: Input should be a valid boolean"),
        ("/api/v1/incidents/inc.1/acknowledge", {},
         "path.incident_id: String should match pattern '^[A-Za-z0-9_-]{1,128}$'"),
        ("/api/v1/changes", {"kind": "deploy"}, "body.service: Field required"),
        ("/api/v1/changes", {"service": "api", "changed_at": 1764496800},
         "body.changed_at: Value error, write a time as ISO 8601 text with a zone, e.g. "
         "2026-11-30T10:00:00Z"),
        ("/api/v1/changes", {"service": "api", "changed_at": "2026-11-30T10:00:00"},
         "body.changed_at: Input should have timezone info"),
        ("/api/v1/changes", {"service": "api", "changed_at": "2999-01-01T00:00:00Z"},
         "body: Value error, changed_at is in the future: record a change once it is made"),
        ("/api/v1/remediation/pause", {"reason": None}, "body.reason: Input should be a valid "
         "string"),
    ],
)  # fmt: skip
async def test_a_bad_body_is_422_naming_the_field(
    client: httpx.AsyncClient, js: JetStreamContext, url: str, body: dict, detail: str
) -> None:
    await append(js, anomaly("payments"))
    answer = await client.post(url, json=body, headers=AS_ANA)
    assert answer.status_code == 422
    assert answer.json() == {"detail": detail}
    assert [s.event.type for s in await read_events(js, ["vigil.evt.>"])] == ["AnomalyDetected"]


async def test_not_json_is_422_too(client: httpx.AsyncClient, js: JetStreamContext) -> None:
    await append(js, anomaly("payments"))
    answer = await client.post("/api/v1/incidents/inc-1/acknowledge", content=b"{",
                               headers=AS_ANA | {"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("body.1: JSON decode error")


async def test_acknowledge_once_and_say_by_whom_after(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    answer = await client.post("/api/v1/incidents/inc-1/acknowledge",
                               json={"comment": "on it"}, headers=AS_ANA)  # fmt: skip
    assert answer.status_code == 200, answer.text
    event = answer.json()["event"]
    assert (event["type"], event["data"]) == ("IncidentAcknowledged",
                                              {"by": "ana", "comment": "on it"})  # fmt: skip
    await on_stream(js, answer)
    again = await client.post("/api/v1/incidents/inc-1/acknowledge", json={}, headers=AS_ANA)
    assert again.status_code == 409
    at = datetime.fromisoformat(event["occurred_at"]).isoformat()
    assert again.json() == {"detail": f"incident inc-1 was already acknowledged by ana at {at}"}


async def test_acknowledging_at_once_records_one_fact(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    url = "/api/v1/incidents/inc-1/acknowledge"
    answers = await asyncio.gather(*(client.post(url, json={}, headers=AS_ANA) for _ in range(6)))
    assert sorted(a.status_code for a in answers) == [200] + [409] * 5, [a.text for a in answers]
    acks = [s for s in await incident_events(js, "inc-1") if s.event.type == "IncidentAcknowledged"]
    assert len(acks) == 1


async def test_a_resolved_incident_is_not_acknowledged(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    await append(js, IncidentResolved(how="manual", by="bob"))
    answer = await client.post("/api/v1/incidents/inc-1/acknowledge", json={}, headers=AS_ANA)
    assert answer.status_code == 409
    assert answer.json()["detail"].startswith("incident inc-1 is resolved (manual at ")


async def test_investigate_opens_an_attempt_unless_one_is_running(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await append(js, anomaly("payments"))
    url = "/api/v1/incidents/inc-1/investigate"
    first = await client.post(url, json={"reason": "look again"}, headers=AS_ANA)
    assert first.status_code == 200, first.text
    data = first.json()["event"]["data"]
    assert (first.json()["event"]["type"], data["attempt"], data["requested_by"],
            data["reason"], data["model"]) == (
        "InvestigationStarted", 1, "ana", "look again", "builtin")  # fmt: skip
    await on_stream(js, first)
    running = await client.post(url, json={}, headers=AS_ANA)
    assert running.status_code == 409
    assert running.json()["detail"].startswith("attempt 1 of incident inc-1 (opened by ana at ")
    assert running.json()["detail"].endswith("has no report yet; wait for it, or ask with "
                                             "supersede")  # fmt: skip
    second = await client.post(url, json={"supersede": True}, headers=AS_ANA)
    assert second.status_code == 200 and second.json()["event"]["data"]["attempt"] == 2
    await append(js, concluded(attempt=2))
    third = await client.post(url, json={}, headers=AS_ANA)
    assert third.status_code == 200 and third.json()["event"]["data"]["attempt"] == 3
    assert third.json()["event"]["data"]["reason"] == "asked by ana"


async def test_a_change_is_recorded_as_the_demo_records_one(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=3)
    body = {"service": "checkout", "kind": "config", "description": "pool 10 -> 50",
            "changed_at": at.isoformat(), "ref": "pool=50"}  # fmt: skip
    answer = await client.post("/api/v1/changes", json=body, headers=AS_ANA)
    assert answer.status_code == 200, answer.text
    event = answer.json()["event"]
    assert event["type"] == "ChangeRecorded" and event["incident_id"].startswith("change-")
    assert event["data"] == body | {"author": "ana", "changed_at": at.isoformat().replace(
        "+00:00", "Z")}  # fmt: skip
    await on_stream(js, answer)
    (stored,) = await read_events(js, ["vigil.evt.*.ChangeRecorded"])
    assert stored.event.data.changed_at == at  # type: ignore[attr-defined]
    bare = await client.post("/api/v1/changes", json={"service": "api", "author": "ci"},
                             headers=AS_ANA)  # fmt: skip
    data = bare.json()["event"]["data"]
    assert (data["kind"], data["author"]) == ("deploy", "ci")
    assert abs(datetime.fromisoformat(data["changed_at"]) - datetime.now(UTC)) < timedelta(
        seconds=30
    )


async def test_a_change_sent_again_with_its_idempotency_key_is_recorded_once(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    # A pipeline that got a 503 (an ack lost: stored or not?) retries with the same key.
    body = {"service": "checkout", "description": "1.5.0", "ref": "deadbeef"}
    keyed = {**AS_ANA, "Idempotency-Key": "pipeline-run-4711"}
    first = await client.post("/api/v1/changes", json=body, headers=keyed)
    again = await client.post("/api/v1/changes", json=body | {"description": "x"}, headers=keyed)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json()  # the first change, as first recorded
    await on_stream(js, first)
    other = await client.post(
        "/api/v1/changes", json=body, headers={**AS_ANA, "Idempotency-Key": "pipeline-run-4712"}
    )
    assert other.json()["event"]["id"] != first.json()["event"]["id"]
    changes = await read_events(js, ["vigil.evt.*.ChangeRecorded"])
    assert len(changes) == 2
    bad = await client.post(
        "/api/v1/changes", json=body, headers={**AS_ANA, "Idempotency-Key": "a b"}
    )
    assert bad.status_code == 422 and "idempotency-key" in bad.json()["detail"].lower()


async def test_pause_and_resume_set_the_switch_the_orchestrators_read(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    never = await client.get("/api/v1/remediation/pause", headers=AS_ROB)
    assert never.status_code == 404
    paused = await client.post("/api/v1/remediation/pause", json={"reason": "db migration"},
                               headers=AS_ANA)  # fmt: skip
    assert paused.status_code == 200, paused.text
    assert {k: paused.json()[k] for k in ("paused", "by", "reason")} == {
        "paused": True, "by": "ana", "reason": "db migration"}  # fmt: skip
    switch = await read_pause(await control_bucket(js))
    assert switch is not None and (switch.paused, switch.by) == (True, "ana")
    assert switch.at == datetime.fromisoformat(paused.json()["at"])
    seen = await client.get("/api/v1/remediation/pause", headers=AS_ROB)
    assert seen.json() == paused.json()
    resumed = await client.post("/api/v1/remediation/resume", json={}, headers=AS_ANA)
    assert resumed.json()["paused"] is False
    switch = await read_pause(await control_bucket(js))
    assert switch is not None and not switch.paused and switch.by == "ana"


async def test_nats_gone_is_503_and_the_retry_records_once(
    client: httpx.AsyncClient, js: JetStreamContext, nats_server: EmbeddedNats
) -> None:
    await append(js, anomaly("payments"))
    url = "/api/v1/incidents/inc-1/acknowledge"
    await nats_server.stop()
    down = await client.post(url, json={}, headers=AS_ANA)
    assert down.status_code == 503, down.text
    assert down.json()["detail"].startswith("NATS did not answer")
    await nats_server.start()
    for _ in range(30):  # a client's retries, until ours has reconnected
        answer = await client.post(url, json={}, headers=AS_ANA)
        if answer.status_code != 503:
            break
    assert answer.status_code == 200, answer.text
    acks = [s for s in await incident_events(js, "inc-1") if s.event.type == "IncidentAcknowledged"]
    assert len(acks) == 1


async def test_the_api_takes_its_expiry_and_model_from_the_settings(
    nc: NATS, tmp_path: Path
) -> None:
    from vigil.app import api_context
    from vigil.settings import Settings

    (tmp_path / "policy.yaml").write_text("approval_expiry_minutes: 7\n")
    settings = Settings(data_dir=tmp_path, policy=tmp_path / "policy.yaml", model="test")
    context = api_context(settings, nc)
    assert (context.approval_expiry, context.model) == (timedelta(minutes=7), "test")
    assert api_context(Settings(data_dir=tmp_path), nc).approval_expiry == timedelta(minutes=30)
