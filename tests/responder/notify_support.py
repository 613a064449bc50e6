"""An incident's milestones as the other roles record them, a notifier run in this process,
and a watch on the NotificationSent events it records."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from eventlog.envelope import Event, new_event, parse_event
from eventlog.payloads import (
    AnomalyDetected,
    Hypothesis,
    IncidentResolved,
    NotificationSent,
    Payload,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RootCauseConcluded,
    SagaCompleted,
    SagaStarted,
    SagaStepStarted,
    SagaStepSucceeded,
)
from eventlog.payloads.investigation import RootCauseReport
from eventlog.publisher import EventPublisher
from responder.notify.notifier import Channel, run_notifier

BASE_URL = "https://vigil.example.com"
STEP = RemediationAction(action="rollback_deploy", params={"service": "checkout", "to": "v41"})


def event(data: Payload, incident: str) -> Event:
    return new_event(data, incident_id=incident, source="test")


def alert(incident: str, name: str = "CheckoutErrors", *, fingerprint: str = "fp-1") -> Event:
    return event(AnomalyDetected(
        origin="alertmanager", name=name, fingerprint=f"{fingerprint}-{incident}",
        starts_at=datetime.now(UTC), service="checkout", severity="critical",
        annotations={"summary": "5xx above 5% for 5 minutes <!channel>"},
    ), incident)  # fmt: skip


def report(incident: str) -> Event:
    hypotheses = [
        Hypothesis(category="deploy_or_config_change", service="checkout", confidence=0.82,
                   explanation="errors began 40 s after deploy v42", evidence=["call-1"]),
        Hypothesis(category="dependency_failure", service="payments", confidence=0.31,
                   explanation="payments p99 rose too", evidence=["call-2"]),
    ]  # fmt: skip
    summary = "checkout's deploy v42 raised its error rate"
    report_ = RootCauseReport(summary=summary, hypotheses=hypotheses)
    return event(RootCauseConcluded(attempt=1, model="builtin", report=report_), incident)


def proposal(incident: str, saga: str = "saga-1") -> Event:
    proposed = RemediationProposed(saga_id=saga, steps=[STEP], mode="approval", risk="medium",
                                   rationale="roll back the deploy", by="responder")  # fmt: skip
    return event(proposed, incident)


def whole_story(incident: str, saga: str = "saga-1") -> list[Event]:
    """From the alert to the resolution; the second alert is no milestone, nor is a step's
    start."""
    return [
        alert(incident), alert(incident, "CheckoutLatency", fingerprint="fp-2"), report(incident),
        proposal(incident, saga),
        event(RemediationApproved(saga_id=saga, by="alice"), incident),
        event(SagaStarted(saga_id=saga, steps=[STEP], services=["checkout"]), incident),
        event(SagaStepStarted(saga_id=saga, step=0, action=STEP.action, params=STEP.params,
                              idempotency_key=f"{saga}/0/1"), incident),
        event(SagaStepSucceeded(saga_id=saga, step=0, action=STEP.action), incident),
        event(SagaCompleted(saga_id=saga), incident),
        event(IncidentResolved(how="remediation", summary="error rate back under 1%"), incident),
    ]  # fmt: skip


WHOLE_STORY_MILESTONES = [
    "opened", "report", "approval_needed", "approved", "saga_started", "step_succeeded",
    "saga_completed", "resolved",
]  # fmt: skip


async def publish(js: JetStreamContext, *events: Event) -> None:
    await EventPublisher(js).publish_many(list(events))


class SentWatch:
    """Every NotificationSent appended, by incident, as it comes."""

    def __init__(self) -> None:
        self.sent: defaultdict[str, list[Event]] = defaultdict(list)
        self._changed = asyncio.Condition()

    async def on_message(self, msg: Msg) -> None:
        event = parse_event(msg.data)
        async with self._changed:
            self.sent[event.incident_id].append(event)
            self._changed.notify_all()

    async def wait(self, incident: str, n: int, timeout: float = 20.0) -> list[Event]:
        """The incident's first `n` NotificationSent events (fails after `timeout` s)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.sent[incident]) >= n)
        return self.sent[incident][:n]

    def milestones(self, incident: str) -> list[str]:
        return [e.data.milestone for e in self.sent[incident]]  # type: ignore[attr-defined]

    def data(self, incident: str) -> list[NotificationSent]:
        return [e.data for e in self.sent[incident]]  # type: ignore[misc]


@contextlib.asynccontextmanager
async def watching_sent(js: JetStreamContext) -> AsyncIterator[SentWatch]:
    watch = SentWatch()
    sub = await js.subscribe("vigil.evt.*.NotificationSent", cb=watch.on_message,
                             ordered_consumer=True)  # fmt: skip
    try:
        yield watch
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def notifying(
    js: JetStreamContext, channels: list[Channel], *, ack_wait: float = 30.0
) -> AsyncIterator[asyncio.Task[None]]:
    """The notifier running until the block ends (its durables exist once it is yielded)."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_notifier(js, channels, stop, ready=ready, ack_wait=ack_wait))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED, timeout=10)
    waiting.cancel()
    if task.done():
        await task  # its error
    assert ready.is_set(), "the notifier's durables were not made within 10 s"
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
