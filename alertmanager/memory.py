"""What the receiver remembers of each Alertmanager group and service, between notifications
and across replicas (`alertmanager.alert_index` keeps it in JetStream KV)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field, model_validator


class AlertMemory(BaseModel):
    """One firing of one alert: its incident, its state, and which of its events are stored
    (by label: firing, resolved, withdrawn.N, firing.N)."""

    incident_id: str | None  # None: seen only resolved, so no incident of Vigil's holds it
    fingerprint: str | None = None  # None in records written before Vigil kept it
    stored: list[str] = Field(default_factory=list)
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None  # left the firing state: resolved or withdrawn
    resolved: bool = False  # Alertmanager said so: a firing copy is stale from now on
    # Times it left the firing state and came back (withdrawn and listed again, or resolved
    # and fired again): each time has its own labels, so its own event ids.
    generation: int = 0

    @model_validator(mode="after")
    def _resolved_if_stored(self) -> AlertMemory:
        self.resolved = self.resolved or self.resolved_label() in self.stored
        return self

    def firing_label(self) -> str:
        return "firing" if self.generation == 0 else f"firing.{self.generation}"

    def resolved_label(self) -> str:
        return "resolved" if self.generation == 0 else f"resolved.{self.generation}"


class GroupMemory(BaseModel):
    """One Alertmanager group (`groupKey`): its current incident and its alerts."""

    incident_id: str | None = None
    last_fired_at: AwareDatetime | None = None
    alerts: dict[str, AlertMemory] = Field(default_factory=dict)

    def firing(self) -> bool:
        """Some alert of the group has not left the firing state (webhooks send resolved
        alerts unless `send_resolved: false`, which Vigil needs left on)."""
        return any(a.ends_at is None for a in self.alerts.values())


class ServiceMemory(BaseModel):
    """The incident of a service's most recent alert, and when its alerts started: an alert
    of the service starting within the window of that span joins it."""

    incident_id: str
    last_fired_at: AwareDatetime
    first_fired_at: AwareDatetime | None = None  # None in records written before Vigil kept it

    def near(self, at: datetime, window: timedelta) -> bool:
        first = self.first_fired_at or self.last_fired_at
        return first - window <= at <= self.last_fired_at + window


def memory_key(kind: Literal["g", "s"], value: str) -> str:
    """A KV key (only [-_=.a-zA-Z0-9] allowed) naming a group or a service."""
    return f"{kind}.{hashlib.sha256(value.encode()).hexdigest()[:32]}"
