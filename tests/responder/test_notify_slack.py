"""The notifier's Slack threads against a real nats-server and a fake Slack on loopback
(tests/slack_server.py: slack-sdk speaks urllib, which respx cannot intercept)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
from nats.js import JetStreamContext

from eventlog.stream import DEAD_LETTER_STREAM, EVENTS_STREAM, connect
from responder.notify.blocks import APPROVE, REJECT
from responder.notify.notifier import SlackThreads
from responder.notify.slack import SlackApi
from tests.responder.notify_support import (
    BASE_URL,
    WHOLE_STORY_MILESTONES,
    alert,
    event,
    notifying,
    proposal,
    publish,
    report,
    watching_sent,
    whole_story,
)
from tests.slack_server import (
    CHANNEL,
    TOKEN,
    FakeSlack,
    rate_limited,
    server_error,
)
from vigil.broker import EmbeddedNats


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack().running() as fake:
        yield fake


def threads(slack: FakeSlack, channel: str = CHANNEL) -> SlackThreads:
    api = SlackApi(TOKEN, base_url=slack.api_url, backoff=0.05, max_wait=5.0, timeout=5.0)
    return SlackThreads(api, channel, BASE_URL)


async def test_one_thread_per_incident_with_each_milestone_a_reply_in_order(
    js: JetStreamContext, slack: FakeSlack
) -> None:
    async with watching_sent(js) as sent, notifying(js, [threads(slack)]):
        await publish(js, *whole_story("inc-a"), *whole_story("inc-b", "saga-2"))
        await sent.wait("inc-a", len(WHOLE_STORY_MILESTONES))
        await sent.wait("inc-b", len(WHOLE_STORY_MILESTONES))

    assert sent.milestones("inc-a") == WHOLE_STORY_MILESTONES
    top = slack.top_level()
    assert len(top) == 2  # one opening message per incident, nothing else at the top
    by_incident = {m["metadata"]["event_payload"]["incident_id"]: m for m in top}
    for incident, opening in sorted(by_incident.items()):
        assert f"?incident={incident}" in orjson.dumps(opening["blocks"]).decode()
        replies = slack.thread(opening["ts"])
        kinds = [r["metadata"]["event_payload"]["milestone"] for r in replies]
        assert kinds == WHOLE_STORY_MILESTONES[1:]  # the thread reads in the stream's order
        recorded = sent.data(incident)
        assert {n.thread_ts for n in recorded} == {opening["ts"]}
        assert [n.message_ts for n in recorded] == [opening["ts"]] + [r["ts"] for r in replies]
        assert {n.target for n in recorded} == {CHANNEL}
    # The report updated the opening message: its top hypotheses with their confidence.
    opening_a = orjson.dumps(by_incident["inc-a"]["blocks"]).decode()
    assert "deploy_or_config_change" in opening_a and "82%" in opening_a
    assert "resolved" in by_incident["inc-a"]["text"]
    # An annotation's `<!channel>` is text, not a mention of everyone.
    assert "<!channel>" not in opening_a and "&lt;!channel&gt;" in opening_a


async def test_the_approval_message_has_buttons_and_loses_them_once_decided(
    js: JetStreamContext, slack: FakeSlack
) -> None:
    async with watching_sent(js) as sent, notifying(js, [threads(slack)]):
        await publish(js, *whole_story("inc-a")[:5])  # up to the approval
        await sent.wait("inc-a", 4)
    approval_ts = sent.data("inc-a")[2].message_ts
    assert approval_ts is not None
    approval = slack.message(approval_ts)
    updates = [c for c in slack.calls_of("chat.update") if c.args["ts"] == approval_ts]
    assert updates, "the decision did not update the approval message"
    first_blocks = orjson.loads(updates[0].args["blocks"]) if isinstance(
        updates[0].args["blocks"], str) else updates[0].args["blocks"]  # fmt: skip
    assert all(b["type"] != "actions" for b in approval["blocks"])
    assert "approved by alice" in orjson.dumps(first_blocks).decode()
    # What it was posted with: both buttons, each naming the incident and the saga.
    posted = next(c for c in slack.calls_of("chat.postMessage")
                  if c.args.get("metadata", {}).get("event_payload", {}).get("milestone")
                  == "approval_needed")  # fmt: skip
    buttons = next(b for b in posted.args["blocks"] if b["type"] == "actions")["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        (APPROVE, "inc-a:saga-1"), (REJECT, "inc-a:saga-1")
    ]  # fmt: skip


async def test_a_rate_limit_and_a_500_are_retried_into_one_message(
    js: JetStreamContext, slack: FakeSlack
) -> None:
    slack.fail("chat.postMessage", rate_limited(retry_after=1), server_error())
    async with watching_sent(js) as sent, notifying(js, [threads(slack)]):
        await publish(js, alert("inc-a"))
        [opened] = await sent.wait("inc-a", 1)

    posts = slack.calls_of("chat.postMessage")
    assert [c.answered for c in posts] == ["failed", "failed", "ok"]
    assert posts[1].at - posts[0].at >= 1.0  # Retry-After was honoured
    # After the 500 (it may have been posted) the channel was searched before posting again.
    looked = slack.calls_of("conversations.history")
    assert len(looked) == 1 and posts[1].at < looked[0].at < posts[2].at
    assert looked[0].args["include_all_metadata"] in ("1", "true", "True")
    [message] = slack.top_level()
    assert opened.data.message_ts == message["ts"]  # type: ignore[attr-defined]


async def test_a_reply_posted_whose_answer_was_lost_is_found_not_posted_again(
    js: JetStreamContext, slack: FakeSlack
) -> None:
    async with watching_sent(js) as sent, notifying(js, [threads(slack)]):
        await publish(js, alert("inc-a"))
        await sent.wait("inc-a", 1)
        slack.fail("chat.postMessage", server_error(carried_out=True))
        await publish(js, report("inc-a"))
        opened, reported = await sent.wait("inc-a", 2)

    thread = slack.thread(opened.data.message_ts)  # type: ignore[attr-defined]
    assert len(thread) == 1  # Slack had it: not posted twice
    assert reported.data.message_ts == thread[0]["ts"]  # type: ignore[attr-defined]
    assert len(slack.calls_of("chat.postMessage")) == 2
    assert len(slack.calls_of("conversations.replies")) == 1


async def test_a_restart_keeps_the_thread_and_never_posts_the_opening_again(
    js: JetStreamContext, slack: FakeSlack
) -> None:
    async with watching_sent(js) as sent:
        async with notifying(js, [threads(slack)]):
            await publish(js, alert("inc-a"), report("inc-a"))
            await sent.wait("inc-a", 2)
        # Meanwhile, with no notifier running: the plan to approve, and a second incident.
        await publish(js, proposal("inc-a"), alert("inc-b"))
        async with notifying(js, [threads(slack)]):
            await sent.wait("inc-a", 3)
            await sent.wait("inc-b", 1)

    opening_a, _ = slack.top_level()
    assert [r["metadata"]["event_payload"]["milestone"] for r in slack.thread(opening_a["ts"])] \
        == ["report", "approval_needed"]  # fmt: skip
    assert sent.data("inc-a")[2].thread_ts == opening_a["ts"]
    assert len(slack.calls_of("chat.postMessage")) == 4


async def test_a_crash_between_posting_and_recording_posts_nothing_twice(
    nats_server: EmbeddedNats, js: JetStreamContext, slack: FakeSlack
) -> None:
    """The notifier dies while Slack stores its message (no answer, nothing recorded): the
    next one gets the milestone again, finds the message by its metadata and records it."""
    doomed = await connect(nats_server.url, name="doomed-notifier")
    slack.hold = asyncio.Event()
    async with watching_sent(js) as sent:
        stop, ready = asyncio.Event(), asyncio.Event()
        from responder.notify.notifier import run_notifier

        task = asyncio.create_task(run_notifier(doomed.jetstream(), [threads(slack)], stop,
                                                ready=ready, ack_wait=2.0))  # fmt: skip
        await asyncio.wait_for(ready.wait(), 10)
        await publish(js, alert("inc-a"))
        await asyncio.wait_for(slack.held.wait(), 10)  # posted, not yet answered
        task.cancel()  # the process dies: nothing acked, nothing recorded
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await doomed.close()
        slack.hold.set()
        slack.hold = None
        async with notifying(js, [threads(slack)], ack_wait=2.0):
            [opened] = await sent.wait("inc-a", 1)

    [message] = slack.top_level()
    assert opened.data.message_ts == message["ts"]  # type: ignore[attr-defined]
    assert len(slack.calls_of("chat.postMessage")) == 1
    assert len(slack.calls_of("conversations.history")) == 1


async def test_a_channel_slack_does_not_know_is_dead_lettered_once_not_retried(
    js: JetStreamContext, slack: FakeSlack
) -> None:
    letters: asyncio.Queue[dict] = asyncio.Queue()

    async def on_letter(msg) -> None:  # type: ignore[no-untyped-def]
        await letters.put(orjson.loads(msg.data))

    sub = await js.subscribe("vigil.dlq.>", cb=on_letter, stream=DEAD_LETTER_STREAM,
                             ordered_consumer=True)  # fmt: skip
    async with notifying(js, [threads(slack, channel="C0GONE")]):
        await publish(js, alert("inc-a"))
        letter = await asyncio.wait_for(letters.get(), 15)
    await sub.unsubscribe()

    assert letter["consumer"] == "notifier-slack"
    assert "channel_not_found" in letter["reason"] and "inc-a" in letter["reason"]
    assert len(slack.calls_of("chat.postMessage")) == 1
    info = await js.consumer_info(EVENTS_STREAM, "notifier-slack")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # terminated, not waiting
    assert not [m for m in slack.messages.values() if m]
    assert event  # (the helper is used by the other tests' stories)
