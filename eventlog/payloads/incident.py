"""Facts about the incident as people handle it: notices, acks, resolution, changes."""

from typing import Literal

from pydantic import AwareDatetime, Field

from eventlog.payloads.base import Payload


class NotificationSent(Payload):
    """A message went out; `thread_ts` keeps later messages in one Slack thread."""

    channel: Literal["slack", "webhook"]
    target: str
    milestone: str
    thread_ts: str | None = None
    message_ts: str | None = None


class IncidentAcknowledged(Payload):
    by: str = Field(min_length=1)
    comment: str = ""


class IncidentResolved(Payload):
    how: Literal["alert_resolved", "remediation", "manual"]
    by: str = "vigil"
    summary: str = ""


class ChangeRecorded(Payload):
    """A deploy or config change, kept so investigations can blame it."""

    service: str = Field(min_length=1)
    kind: str = Field(default="deploy", min_length=1)
    description: str = ""
    author: str | None = None
    changed_at: AwareDatetime
    ref: str | None = None
