"""POST /slack/interactions: Slack's signature, and a button click recorded as the decision,
against a real nats-server and a fake Slack's response_url."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from alertmanager.alert_index import AlertIndex
from api.app import ApiContext, WebhookConfig, create_app
from eventlog.history import incident_events
from eventlog.payloads import RemediationApproved, RemediationRejected
from eventlog.publisher import EventPublisher
from responder.notify.blocks import APPROVE, REJECT, decision_buttons
from tests.responder.notify_support import alert, proposal, publish
from tests.slack_server import FakeSlack
from vigil.broker import EmbeddedNats

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
URL = "/slack/interactions"
APPROVERS = frozenset({"U024BE7LH"})  # alice, who clicks in these tests
ASKED = {"type": "section", "text": {"type": "mrkdwn", "text": "Roll back checkout?"}}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack().running() as fake:
        yield fake


async def client_for(
    nc: NATS, js: JetStreamContext, secret: str | None, approvers: frozenset[str] = APPROVERS
) -> httpx.AsyncClient:
    index = await AlertIndex.open(js)
    app = create_app(
        EventPublisher(js), index, WebhookConfig(token=None), registry=CollectorRegistry(),
        context=ApiContext(nc=nc, slack_signing_secret=secret, slack_approvers=approvers),
    )  # fmt: skip
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vigil")


@pytest.fixture
async def api(nc: NATS, js: JetStreamContext) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(nc, js, SECRET) as c:
        yield c


@pytest.fixture
async def awaiting(js: JetStreamContext) -> str:
    """An incident whose plan saga-1 awaits approval."""
    await publish(js, alert("inc-a"), proposal("inc-a", "saga-1"))
    return "inc-a"


def click(action_id: str, slack: FakeSlack, value: str = "inc-a:saga-1") -> bytes:
    """The form Slack posts when a user clicks a button of the approval message."""
    payload = {
        "type": "block_actions",
        "user": {"id": "U024BE7LH", "username": "alice", "name": "alice", "team_id": "T0VIGIL"},
        "api_app_id": "A0VIGIL01", "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": "1764000001.000001",
                      "channel_id": "C0VIGIL01", "is_ephemeral": False},
        "trigger_id": "123.456.abc", "team": {"id": "T0VIGIL", "domain": "vigil"},
        "channel": {"id": "C0VIGIL01", "name": "incidents"},
        "message": {"type": "message", "ts": "1764000001.000001", "text": "approval needed",
                    "blocks": [ASKED, decision_buttons("inc-a", "saga-1")]},
        "response_url": f"{slack.url}/respond/click-1",
        "actions": [{"action_id": action_id, "block_id": "decide-saga-1", "value": value,
                     "type": "button", "action_ts": "1764000009.000100",
                     "text": {"type": "plain_text", "text": "Approve"}}],
    }  # fmt: skip
    return urlencode({"payload": orjson.dumps(payload).decode()}).encode()


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    """Headers as Slack signs: v0=HMAC-SHA256(secret, "v0:<timestamp>:<body>")."""
    stamp = str(int(at if at is not None else time.time()))
    base = f"v0:{stamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip


async def decisions(js: JetStreamContext, incident: str) -> list[Any]:
    return [s.event.data for s in await incident_events(js, incident)
            if isinstance(s.event.data, RemediationApproved | RemediationRejected)]  # fmt: skip


async def test_an_approve_click_records_the_approval_by_the_slack_user(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str
) -> None:
    body = click(APPROVE, slack)
    answer = await api.post(URL, content=body, headers=signed(body))
    assert answer.status_code == 200, answer.text
    [decided] = await decisions(js, awaiting)
    assert isinstance(decided, RemediationApproved)
    assert (decided.saga_id, decided.by) == ("saga-1", "slack:alice")
    await slack.responded.wait()
    [shown] = slack.responses["click-1"]
    assert shown == answer.json() and shown["replace_original"] is True
    assert shown["blocks"][0] == ASKED  # what was asked stays, the buttons are gone
    assert all(b["type"] != "actions" for b in shown["blocks"])
    assert "approved by <@U024BE7LH>" in shown["text"]


@pytest.mark.parametrize(
    ("approvers", "said"),
    [
        (frozenset({"U0OTHER01"}), "<@U024BE7LH> is not among VIGIL_SLACK_APPROVERS"),
        (frozenset(), "VIGIL_SLACK_APPROVERS is not set"),
    ],
    ids=["not-named", "nobody-named"],
)
async def test_a_click_by_someone_not_named_an_approver_records_nothing(
    nc: NATS, js: JetStreamContext, slack: FakeSlack, awaiting: str,
    approvers: frozenset[str], said: str,
) -> None:  # fmt: skip
    # Everyone in the channel sees the buttons (guests, a Slack Connect partner).
    async with await client_for(nc, js, SECRET, approvers) as api:
        for action in (APPROVE, REJECT):
            body = click(action, slack)
            answer = await api.post(URL, content=body, headers=signed(body))
            assert answer.status_code == 200
            assert answer.json()["response_type"] == "ephemeral"
            assert said in answer.json()["text"]
    assert await decisions(js, awaiting) == []


async def test_a_reject_click_records_the_rejection(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str
) -> None:
    body = click(REJECT, slack)
    assert (await api.post(URL, content=body, headers=signed(body))).status_code == 200
    [decided] = await decisions(js, awaiting)
    assert isinstance(decided, RemediationRejected) and decided.by == "slack:alice"


async def test_a_second_click_gets_an_ephemeral_note_and_records_nothing(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str
) -> None:
    body = click(APPROVE, slack)
    await api.post(URL, content=body, headers=signed(body))
    body = click(REJECT, slack)
    answer = await api.post(URL, content=body, headers=signed(body))
    assert answer.status_code == 200
    assert answer.json()["response_type"] == "ephemeral"
    assert "awaits" in answer.json()["text"]
    assert len(await decisions(js, awaiting)) == 1


@pytest.mark.parametrize(
    ("headers_of", "reason"),
    [
        (lambda body: signed(body, secret="another-apps-secret"), "signature does not match"),
        (lambda body: signed(body, at=time.time() - 6 * 60), "beyond 5 minutes"),
        (lambda body: signed(body, at=time.time() + 6 * 60), "beyond 5 minutes"),
        (lambda body: {"Content-Type": "application/x-www-form-urlencoded"}, "not signed"),
        (lambda body: signed(body) | {"X-Slack-Request-Timestamp": "soon"}, "Unix seconds"),
        # '²'.isdigit() is True, yet int('²') fails: it was a 500
        (lambda body: signed(body) | {"X-Slack-Request-Timestamp": b"\xb2"}, "Unix seconds"),
    ],
    ids=["wrong-secret", "stale", "future", "unsigned", "bad-timestamp", "superscript"],
)
async def test_a_request_not_signed_by_slack_now_is_401_with_the_reason(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str,
    headers_of: Any, reason: str,
) -> None:  # fmt: skip
    body = click(APPROVE, slack)
    answer = await api.post(URL, content=body, headers=headers_of(body))
    assert answer.status_code == 401
    assert reason in answer.json()["detail"]
    assert await decisions(js, awaiting) == []


async def test_a_body_changed_after_signing_is_401(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str
) -> None:
    headers = signed(click(REJECT, slack))
    answer = await api.post(URL, content=click(APPROVE, slack), headers=headers)
    assert answer.status_code == 401
    assert await decisions(js, awaiting) == []


async def test_without_a_signing_secret_the_door_is_closed(
    nc: NATS, js: JetStreamContext, slack: FakeSlack, awaiting: str
) -> None:
    body = click(APPROVE, slack)
    async with await client_for(nc, js, None) as api:
        answer = await api.post(URL, content=body, headers=signed(body))
    assert answer.status_code == 503
    assert "VIGIL_SLACK_SIGNING_SECRET" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"text=hello", "no `payload`"),
        (urlencode({"payload": "{not json"}).encode(), "not JSON"),
        (urlencode({"payload": '{"type": "view_submission"}'}).encode(), "block_actions"),
    ],
)
async def test_a_signed_payload_vigil_cannot_read_is_400(
    api: httpx.AsyncClient, body: bytes, reason: str
) -> None:
    answer = await api.post(URL, content=body, headers=signed(body))
    assert answer.status_code == 400 and reason in answer.json()["detail"]


async def test_a_button_value_that_names_no_saga_is_400(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str
) -> None:
    body = click(APPROVE, slack, value="inc-a; rm -rf /")
    answer = await api.post(URL, content=body, headers=signed(body))
    assert answer.status_code == 400 and "<incident_id>:<saga_id>" in answer.json()["detail"]
    assert await decisions(js, awaiting) == []


async def test_a_click_while_nats_is_down_is_503_and_a_later_one_is_recorded(
    api: httpx.AsyncClient, js: JetStreamContext, slack: FakeSlack, awaiting: str,
    nats_server: EmbeddedNats,
) -> None:  # fmt: skip
    await nats_server.stop()
    body = click(APPROVE, slack)
    answer = await api.post(URL, content=body, headers=signed(body))
    assert answer.status_code == 503 and "click again" in answer.json()["detail"]
    await nats_server.start()
    for _ in range(30):  # the user clicks again until the API has reconnected
        body = click(APPROVE, slack)
        answer = await api.post(URL, content=body, headers=signed(body))
        if answer.status_code == 200:
            break
        assert answer.status_code == 503
    assert answer.status_code == 200, answer.text
    [decided] = await decisions(js, awaiting)
    assert isinstance(decided, RemediationApproved)
