"""The notifier role: a durable consumer of incident milestones per channel, telling people.

Each channel (Slack's threads, a Slack incoming webhook, a generic JSON webhook) has its own
durable consumer, so a slow or failing channel holds back neither the others nor any
investigation. On each milestone event it reads the incident's events (the stream, not the
lagging read model), sends what is not yet recorded as sent, and records `NotificationSent`
with an id derived from (the milestone's event id, channel): a second delivery finds it and
sends nothing. The Slack thread's ts comes from the opening message's `NotificationSent`, so
a restarted notifier keeps threading and never posts the opening message twice; a message
posted just before a crash (no record yet) is found again by its metadata (`slack.py`).

A channel's permanent refusal (`channel_not_found`, a webhook's 404) is logged once and the
milestone dead-lettered (VIGIL_DEAD_LETTERS), never retried in a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.js import JetStreamContext

from eventlog.consumer import ConsumerSpec, GiveUp, Received, consume
from eventlog.envelope import Event, new_event
from eventlog.history import incident_events
from eventlog.payloads import NotificationSent, RemediationProposed
from eventlog.publisher import EventPublisher
from responder.notify.blocks import (
    Blocks,
    decided_blocks,
    metadata,
    opening_blocks,
    reply_blocks,
    webhook_body,
)
from responder.notify.milestones import (
    SUBJECTS,
    ChannelKind,
    IncidentStory,
    Milestone,
    milestone_of,
    notification_id,
)
from responder.notify.slack import RateLimited, SlackApi, SlackRefused, Uncertain
from responder.notify.webhooks import JsonWebhook, SlackIncomingWebhook, WebhookRefused

log = logging.getLogger(__name__)
SOURCE = "notifier"
Record = Callable[[Event, NotificationSent], Awaitable[None]]


class Channel(Protocol):
    """Where milestones go; `durable` names its own consumer."""

    kind: ChannelKind
    durable: str

    async def deliver(
        self, milestone: Milestone, story: IncidentStory, *, maybe_sent: bool, record: Record
    ) -> None: ...


def notifier_spec(durable: str, concurrency: int = 4, ack_wait: float = 30.0) -> ConsumerSpec:
    """A new notifier starts at the next event (`deliver="new"`): switching Slack on does not
    replay every past incident into the channel. One incident's milestones go in stream
    order (its thread reads in order); a channel that is down is retried with a growing
    back-off for about half an hour, then the milestone is dead-lettered."""
    return ConsumerSpec(
        durable=durable,
        filter_subject=SUBJECTS,
        concurrency=concurrency,
        deliver="new",
        max_deliver=12,
        retry_backoff=30.0,
        handler_timeout=600.0,
        ack_wait=ack_wait,  # a dead notifier's milestone goes to another after this
    )


class Notifier:
    """One channel's consumer handler."""

    def __init__(self, js: JetStreamContext, channel: Channel) -> None:
        self.js, self.channel = js, channel
        self.publisher = EventPublisher(js)

    async def handle(self, received: Received) -> None:
        event = received.event
        stored = await incident_events(self.js, event.incident_id)
        story = IncidentStory(event.incident_id, tuple(s.event for s in stored))
        milestone = milestone_of(event, story)
        if milestone is None or story.sent(event.id, self.channel.kind) is not None:
            return
        try:
            await self.channel.deliver(
                milestone, story, maybe_sent=received.deliveries > 1, record=self.record
            )
        except (SlackRefused, WebhookRefused) as exc:
            reason = f"incident {event.incident_id}: {milestone.kind} not sent: {exc}"
            raise GiveUp(reason) from None

    async def record(self, milestone_event: Event, sent: NotificationSent) -> None:
        event = new_event(
            sent, incident_id=milestone_event.incident_id, source=SOURCE,
            caused_by=milestone_event, event_id=notification_id(milestone_event.id, sent.channel),
        )  # fmt: skip
        await self.publisher.publish(event)


class SlackThreads:
    """One thread per incident in `channel` through the Web API (bot token)."""

    kind: ChannelKind = "slack"
    durable = "notifier-slack"

    def __init__(self, api: SlackApi, channel: str, base_url: str) -> None:
        self.api, self.channel, self.base_url = api, channel, base_url

    async def deliver(
        self, milestone: Milestone, story: IncidentStory, *, maybe_sent: bool, record: Record
    ) -> None:
        if milestone.kind == "opened":
            await self._open(milestone, story, maybe_sent=maybe_sent, record=record)
            return
        channel, thread = story.slack_channel() or self.channel, story.thread_ts()
        opening = milestone_of(story.opening, story) if story.opening is not None else None
        if thread is None and opening is not None:
            # Its opening message failed or is still to come: open the thread first. It may
            # have been posted by a delivery that died before recording it: look first.
            channel, thread = await self._open(opening, story, maybe_sent=True, record=record)
        text, blocks = reply_blocks(milestone, self.base_url)
        channel, ts = await self.api.post_once(
            channel, text=text, blocks=blocks, metadata=metadata(milestone), thread_ts=thread,
            since=milestone.event.occurred_at, maybe_posted=maybe_sent,
        )  # fmt: skip
        await record(milestone.event, NotificationSent(
            channel="slack", target=channel, milestone=milestone.kind, thread_ts=thread,
            message_ts=ts,
        ))  # fmt: skip
        if thread is not None and milestone.kind in ("report", "resolved", "reopened"):
            text, blocks = opening_blocks(story, self.base_url)  # hypotheses, status
            await self._update(story, channel, thread, text, blocks)
        if milestone.kind in ("approved", "rejected") and milestone.saga_id is not None:
            await self._close_approval(milestone, story, channel)

    async def _open(
        self, opening: Milestone, story: IncidentStory, *, maybe_sent: bool, record: Record
    ) -> tuple[str, str]:
        text, blocks = opening_blocks(story, self.base_url)
        channel, ts = await self.api.post_once(
            self.channel, text=text, blocks=blocks, metadata=metadata(opening), thread_ts=None,
            since=opening.event.occurred_at, maybe_posted=maybe_sent,
        )  # fmt: skip
        await record(opening.event, NotificationSent(
            channel="slack", target=channel, milestone=opening.kind, thread_ts=ts, message_ts=ts,
        ))  # fmt: skip
        return channel, ts

    async def _close_approval(
        self, decision: Milestone, story: IncidentStory, channel: str
    ) -> None:
        """The 'approval needed' message loses its buttons once decided (from anywhere)."""
        saga_id = decision.saga_id
        assert saga_id is not None
        sent = story.approval_message(saga_id)
        proposal = next((e for e in story.events if isinstance(e.data, RemediationProposed)
                         and e.data.saga_id == saga_id), None)  # fmt: skip
        asked = milestone_of(proposal, story) if proposal is not None else None
        if sent is None or sent.message_ts is None or asked is None:
            return
        text, blocks = reply_blocks(asked, self.base_url)
        blocks = decided_blocks(blocks, f"{decision.kind} by {decision.event.data.by}")  # type: ignore[attr-defined]
        await self._update(story, channel, sent.message_ts, text, blocks)

    async def _update(
        self, story: IncidentStory, channel: str, ts: str, text: str, blocks: Blocks
    ) -> None:
        # Cosmetic: the reply is posted and recorded already, so a failure is logged, and the
        # next milestone that updates the message makes it right.
        try:
            await self.api.call_retried("chat.update", channel=channel, ts=ts, text=text,
                                        blocks=blocks)  # fmt: skip
        except (SlackRefused, RateLimited, Uncertain) as exc:
            log.warning("incident %s: could not update message %s: %s", story.incident_id, ts, exc)


class SlackWebhookNotices:
    """One Slack incoming-webhook message per milestone: no thread, so no ts to record."""

    kind: ChannelKind = "slack"
    durable = "notifier-slack-webhook"

    def __init__(self, hook: SlackIncomingWebhook, base_url: str) -> None:
        self.hook, self.base_url = hook, base_url

    async def deliver(
        self, milestone: Milestone, story: IncidentStory, *, maybe_sent: bool, record: Record
    ) -> None:
        if milestone.kind == "opened":
            text, blocks = opening_blocks(story, self.base_url)
        else:
            text, blocks = reply_blocks(milestone, self.base_url)
        await self.hook.send(text, blocks)
        await record(milestone.event, NotificationSent(
            channel="slack", target=self.hook.target, milestone=milestone.kind,
        ))  # fmt: skip


class WebhookNotices:
    """One POST of the milestone's JSON per milestone to a generic webhook."""

    kind: ChannelKind = "webhook"
    durable = "notifier-webhook"

    def __init__(self, hook: JsonWebhook, base_url: str) -> None:
        self.hook, self.base_url = hook, base_url

    async def deliver(
        self, milestone: Milestone, story: IncidentStory, *, maybe_sent: bool, record: Record
    ) -> None:
        await self.hook.send(webhook_body(milestone, story, self.base_url), str(milestone.event.id))
        await record(milestone.event, NotificationSent(
            channel="webhook", target=self.hook.target, milestone=milestone.kind,
        ))  # fmt: skip


async def run_notifier(
    js: JetStreamContext,
    channels: list[Channel],
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    ack_wait: float = 30.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Consume for every channel until `stop`; `ready` once every durable exists."""
    readies = [asyncio.Event() for _ in channels]
    tasks = [
        asyncio.create_task(consume(js, notifier_spec(ch.durable, concurrency, ack_wait),
                                    Notifier(js, ch).handle, stop=stop, ready=r))
        for ch, r in zip(channels, readies, strict=True)
    ]  # fmt: skip

    async def all_ready() -> None:
        await asyncio.gather(*(r.wait() for r in readies))
        if ready is not None:
            ready.set()

    signalling = asyncio.create_task(all_ready())
    try:
        await asyncio.gather(*tasks)
    finally:
        signalling.cancel()
        for task in tasks:
            task.cancel()
