"""Which events are milestones people are told of, and what an incident looks like to them.

Pure functions over an incident's events (in stream order): `milestone_of` says whether an
event is a milestone and which, `IncidentStory` folds what a message shows (alert, service,
severity, top hypotheses, status) and what was already sent (`NotificationSent`, whose
envelope's `causation_id` is the milestone's event).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from eventlog.envelope import Event, subject_for
from eventlog.payloads import (
    AnomalyDetected,
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    Hypothesis,
    IncidentResolved,
    NotificationSent,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    RootCauseConcluded,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
    SagaStepFailed,
    SagaStepSucceeded,
)

Kind = Literal[
    "opened", "reopened", "report", "approval_needed", "approved", "rejected", "saga_started",
    "step_succeeded", "step_failed", "compensation_started", "compensation_succeeded",
    "compensation_failed", "compensation_escalated", "saga_compensated", "saga_completed",
    "resolved",
]  # fmt: skip
ChannelKind = Literal["slack", "webhook"]
NAMESPACE = uuid.UUID("b3f1e6a2-5c0d-4e7b-9a18-6d2c4f8e1a07")
# The event types the notifier consumes: every one that may be a milestone.
TRIGGERS = (
    "AnomalyDetected", "RootCauseConcluded", "RemediationProposed", "RemediationApproved",
    "RemediationRejected", "SagaStarted", "SagaStepSucceeded", "SagaStepFailed",
    "CompensationStarted", "CompensationSucceeded", "CompensationFailed",
    "CompensationEscalated", "SagaCompensated", "SagaCompleted", "IncidentResolved",
)  # fmt: skip
SUBJECTS = tuple(subject_for("*", t) for t in TRIGGERS)
TOP_HYPOTHESES = 3


@dataclass(frozen=True)
class Milestone:
    """A milestone: its kind, the event that is it, and one line that tells it (plain text)."""

    kind: Kind
    event: Event
    summary: str

    @property
    def saga_id(self) -> str | None:
        return getattr(self.event.data, "saga_id", None)


def notification_id(milestone_event_id: uuid.UUID, channel: ChannelKind) -> uuid.UUID:
    """The id of the NotificationSent of one milestone on one channel: derived, so a second
    delivery of the milestone records nothing twice."""
    return uuid.uuid5(NAMESPACE, f"{milestone_event_id}|{channel}")


@dataclass(frozen=True)
class IncidentStory:
    """What the incident's events say, as of the last one read."""

    incident_id: str
    events: tuple[Event, ...]

    @property
    def opening(self) -> Event | None:
        """The AnomalyDetected that opened the incident (its first)."""
        return next((e for e in self.events if isinstance(e.data, AnomalyDetected)), None)

    @property
    def alert(self) -> AnomalyDetected | None:
        first = self.opening
        return first.data if first is not None else None  # type: ignore[return-value]

    @property
    def service(self) -> str | None:
        return self.alert.service if self.alert else None

    @property
    def severity(self) -> str | None:
        return self.alert.severity if self.alert else None

    @property
    def title(self) -> str:
        return self.alert.name if self.alert else self.incident_id

    @property
    def report(self) -> RootCauseConcluded | None:
        """The latest attempt's report."""
        reports = [e.data for e in self.events if isinstance(e.data, RootCauseConcluded)]
        return reports[-1] if reports else None  # type: ignore[return-value]

    @property
    def top_hypotheses(self) -> list[Hypothesis]:
        report = self.report
        return list(report.report.hypotheses[:TOP_HYPOTHESES]) if report else []

    @property
    def resolved(self) -> IncidentResolved | None:
        """The resolution, unless an anomaly fired since (reopened)."""
        state: IncidentResolved | None = None
        for e in self.events:
            if isinstance(e.data, IncidentResolved):
                state = e.data
            elif isinstance(e.data, AnomalyDetected) and not e.data.returned:
                state = None
        return state

    def sent(self, milestone_event_id: uuid.UUID, channel: ChannelKind) -> NotificationSent | None:
        """The NotificationSent of that milestone on that channel, if recorded."""
        wanted = notification_id(milestone_event_id, channel)
        for e in self.events:
            if e.id == wanted and isinstance(e.data, NotificationSent):
                return e.data
        return None

    def thread_ts(self) -> str | None:
        """The Slack thread of the incident: the ts of its recorded opening message."""
        opening = self.opening
        sent = self.sent(opening.id, "slack") if opening is not None else None
        return sent.message_ts if sent is not None else None

    def slack_channel(self) -> str | None:
        """The channel id the opening message went to (Slack answers with the id)."""
        opening = self.opening
        sent = self.sent(opening.id, "slack") if opening is not None else None
        return sent.target if sent is not None else None

    def approval_message(self, saga_id: str) -> NotificationSent | None:
        """The recorded 'approval needed' message of a saga (its buttons)."""
        for e in self.events:
            if isinstance(e.data, RemediationProposed) and e.data.saga_id == saga_id:
                return self.sent(e.id, "slack")
        return None


def milestone_of(event: Event, story: IncidentStory) -> Milestone | None:
    """The milestone `event` is, or None. `story` holds the incident's events (the event
    among them): whether an anomaly opens the incident depends on what came before it."""
    data = event.data
    match data:
        case AnomalyDetected():
            return _anomaly(event, data, story)
        case RootCauseConcluded():
            top = data.report.hypotheses[0]
            where = f" of {top.service}" if top.service else ""
            partial = " (partial)" if data.report.partial else ""
            text = f"Report{partial}: {top.category}{where} ({top.confidence:.0%}). "
            return Milestone("report", event, text + data.report.summary)
        case RemediationProposed(mode="approval"):
            steps = ", ".join(_step(s.action, s.params) for s in data.steps)
            text = f"Approval needed ({data.risk} risk) for {data.saga_id}: {steps}."
            if data.rationale:
                text += f" {data.rationale}"
            return Milestone("approval_needed", event, text)
        case RemediationApproved():
            return Milestone("approved", event, f"{data.saga_id} approved by {data.by}.")
        case RemediationRejected():
            why = f": {data.reason}" if data.reason else ""
            return Milestone("rejected", event, f"{data.saga_id} rejected by {data.by}{why}.")
        case SagaStarted():
            dry = " (dry run)" if data.dry_run else ""
            steps = ", ".join(_step(s.action, s.params) for s in data.steps)
            return Milestone("saga_started", event, f"Remediation {data.saga_id}{dry}: {steps}.")
        case SagaStepSucceeded():
            text = f"Step {data.step + 1} ({data.action}) succeeded."
            return Milestone("step_succeeded", event, text)
        case SagaStepFailed():
            maybe = " (its effect is uncertain)" if data.uncertain else ""
            text = f"Step {data.step + 1} ({data.action}) failed{maybe}: {data.error}"
            return Milestone("step_failed", event, text)
        case CompensationStarted():
            text = f"Undoing step {data.step + 1} with {data.action}."
            return Milestone("compensation_started", event, text)
        case CompensationSucceeded():
            return Milestone("compensation_succeeded", event, f"Step {data.step + 1} undone.")
        case CompensationFailed():
            text = f"Undoing step {data.step + 1} ({data.action}) failed: {data.error}"
            return Milestone("compensation_failed", event, text)
        case CompensationEscalated():
            text = (
                f"A human must undo step {data.step + 1} ({data.action}): it failed "
                f"{data.attempts} times, last: {data.error}"
            )
            return Milestone("compensation_escalated", event, text)
        case SagaCompensated():
            why = f": {data.reason}" if data.reason else ""
            return Milestone("saga_compensated", event, f"{data.saga_id} rolled back{why}.")
        case SagaCompleted():
            return Milestone("saga_completed", event, f"{data.saga_id} completed.")
        case IncidentResolved():
            how = {"alert_resolved": "the alert resolved", "remediation": "remediation",
                   "manual": "hand"}[data.how]  # fmt: skip
            text = f"Resolved by {how} ({data.by})." + (f" {data.summary}" if data.summary else "")
            return Milestone("resolved", event, text)
    return None


def _anomaly(event: Event, data: AnomalyDetected, story: IncidentStory) -> Milestone | None:
    if data.returned:
        return None  # the same firing listed again: not news
    before = story.events[: _index(story, event)]
    if not any(isinstance(e.data, AnomalyDetected) for e in before):
        return Milestone("opened", event, _alert_line(data))
    was_resolved = IncidentStory(story.incident_id, before).resolved is not None
    if was_resolved:
        return Milestone("reopened", event, "Reopened: " + _alert_line(data))
    return None  # one more alert of an open incident: the thread would only grow noisy


def _index(story: IncidentStory, event: Event) -> int:
    for i, e in enumerate(story.events):
        if e.id == event.id:
            return i
    return len(story.events)


def _alert_line(data: AnomalyDetected) -> str:
    where = f" on {data.service}" if data.service else ""
    severity = f"[{data.severity}] " if data.severity else ""
    about = data.annotations.get("summary") or data.annotations.get("description") or ""
    return f"{severity}{data.name}{where}" + (f": {about}" if about else "")


def _step(action: str, params: dict[str, object]) -> str:
    args = " ".join(f"{k}={v}" for k, v in params.items())
    return f"{action} {args}".strip()
