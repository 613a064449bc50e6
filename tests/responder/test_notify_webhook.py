"""The generic JSON webhook and Slack's incoming webhook: one POST per milestone, retried on
429 and 5xx, refused for good on another 4xx; against a receiver on loopback. And a Slack
that hangs holds back no other channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eventlog.stream import DEAD_LETTER_STREAM
from responder.notify.notifier import SlackThreads, SlackWebhookNotices, WebhookNotices
from responder.notify.slack import SlackApi
from responder.notify.webhooks import JsonWebhook, SlackIncomingWebhook
from tests.loopback import serving
from tests.responder.notify_support import (
    BASE_URL,
    WHOLE_STORY_MILESTONES,
    alert,
    notifying,
    publish,
    watching_sent,
    whole_story,
)
from tests.slack_server import CHANNEL, TOKEN, FakeSlack

HOOK_TOKEN = "hook-token-0123456789"


@dataclass
class Receiver:
    """Records each POST (time, headers, JSON); answers the scripted statuses first."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    got: list[tuple[float, dict[str, str], Any]] = field(default_factory=list)
    url: str = ""

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        self.got.append((time.monotonic(), dict(request.headers), orjson.loads(body)))
        if self.script:
            status, headers = self.script.pop(0)
            return JSONResponse({"error": "try later"}, status_code=status, headers=headers)
        return Response("ok" if request.url.path.startswith("/slack") else "{}")

    def bodies(self) -> list[Any]:
        """Every body received, in order (the tries refused included)."""
        return [body for _, _, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = Starlette(routes=[Route("/hook", r.receive, methods=["POST"]),
                            Route("/slack/hook", r.receive, methods=["POST"])])  # fmt: skip
    async with serving(app) as url:
        r.url = url
        yield r


def json_hook(receiver: Receiver) -> WebhookNotices:
    hook = JsonWebhook(f"{receiver.url}/hook?secret=1", HOOK_TOKEN, backoff=0.05, max_wait=5)
    return WebhookNotices(hook, BASE_URL)


async def test_one_post_per_milestone_with_its_json_body_and_idempotency_key(
    js: JetStreamContext, receiver: Receiver
) -> None:
    story = whole_story("inc-a")
    async with watching_sent(js) as sent, notifying(js, [json_hook(receiver)]):
        await publish(js, *story)
        await sent.wait("inc-a", len(WHOLE_STORY_MILESTONES))

    assert [b["milestone"] for b in receiver.bodies()] == WHOLE_STORY_MILESTONES
    _, headers, body = receiver.got[0]
    assert headers["authorization"] == f"Bearer {HOOK_TOKEN}"
    assert headers["idempotency-key"] == str(story[0].id) == body["event"]["id"]
    assert body == {
        "milestone": "opened", "incident_id": "inc-a", "service": "checkout",
        "severity": "critical", "title": "CheckoutErrors",
        "summary": "[critical] CheckoutErrors on checkout: 5xx above 5% for 5 minutes <!channel>",
        "link": f"{BASE_URL}/?incident=inc-a", "event": orjson.loads(story[0].to_json()),
    }  # fmt: skip
    recorded = sent.data("inc-a")
    assert {(n.channel, n.target, n.thread_ts) for n in recorded} == {
        # neither the URL's query nor its path is kept: chat tools hide their secret in either
        ("webhook", f"{receiver.url}/", None)
    }


async def test_429_and_503_are_retried_and_the_milestone_arrives_once(
    js: JetStreamContext, receiver: Receiver
) -> None:
    receiver.script = [(429, {"Retry-After": "1"}), (503, {})]
    async with watching_sent(js) as sent, notifying(js, [json_hook(receiver)]):
        await publish(js, alert("inc-a"))
        await sent.wait("inc-a", 1)

    times = [t for t, _, _ in receiver.got]
    assert len(times) == 3 and times[1] - times[0] >= 1.0  # Retry-After honoured
    keys = {h["idempotency-key"] for _, h, _ in receiver.got}
    assert len(keys) == 1  # the same key each try: the receiver can drop a copy
    assert len(sent.data("inc-a")) == 1


async def test_a_404_is_dead_lettered_at_once(js: JetStreamContext, receiver: Receiver) -> None:
    receiver.script = [(404, {})]
    letters: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_letter(msg: Any) -> None:
        await letters.put(orjson.loads(msg.data))

    sub = await js.subscribe("vigil.dlq.>", cb=on_letter, stream=DEAD_LETTER_STREAM,
                             ordered_consumer=True)  # fmt: skip
    async with notifying(js, [json_hook(receiver)]):
        await publish(js, alert("inc-a"))
        letter = await asyncio.wait_for(letters.get(), 15)
    await sub.unsubscribe()
    assert letter["consumer"] == "notifier-webhook" and "404" in letter["reason"]
    assert len(receiver.got) == 1


async def test_slack_incoming_webhook_posts_each_milestone_without_a_thread(
    js: JetStreamContext, receiver: Receiver
) -> None:
    receiver.script = [(429, {"Retry-After": "1"})]
    hook = SlackIncomingWebhook(f"{receiver.url}/slack/hook", backoff=0.05, max_wait=5)
    async with watching_sent(js) as sent, notifying(js, [SlackWebhookNotices(hook, BASE_URL)]):
        await publish(js, *whole_story("inc-a")[:3])
        await sent.wait("inc-a", 2)

    bodies = receiver.bodies()
    assert len(bodies) == 3  # the opening twice (429, then taken), the report once
    assert bodies[0] == bodies[1] and "CheckoutErrors" in bodies[0]["text"]
    assert "deploy_or_config_change" in bodies[2]["text"]
    assert {(n.channel, n.target, n.thread_ts, n.message_ts) for n in sent.data("inc-a")} == {
        ("slack", "incoming-webhook", None, None)
    }


async def test_a_slack_that_hangs_holds_back_no_other_channel(
    js: JetStreamContext, receiver: Receiver
) -> None:
    async with FakeSlack().running() as slack:
        slack.hold = asyncio.Event()  # Slack takes the message and does not answer
        api = SlackApi(TOKEN, base_url=slack.api_url, timeout=30)
        channels = [SlackThreads(api, CHANNEL, BASE_URL), json_hook(receiver)]
        async with watching_sent(js) as sent, notifying(js, channels):
            await publish(js, *whole_story("inc-a")[:3])
            await asyncio.wait_for(slack.held.wait(), 10)
            webhook_sent = await sent.wait("inc-a", 2)  # the webhook's, while Slack hangs
            assert {e.data.channel for e in webhook_sent} == {"webhook"}  # type: ignore[attr-defined]
            slack.hold.set()
            await sent.wait("inc-a", 4)
    assert [b["milestone"] for b in receiver.bodies()] == ["opened", "report"]
