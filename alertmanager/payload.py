"""Alertmanager's webhook payload (version "4"), as Alertmanager 0.25 sends it.

Field names follow Alertmanager's JSON (aliases); unknown fields are ignored so a newer
Alertmanager adding one does not get its notifications refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

Labels = dict[str, str]
# Go's zero time: what Alertmanager sends as endsAt while an alert is still firing.
GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


class WebhookAlert(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    status: Literal["firing", "resolved"]
    labels: Labels = Field(min_length=1)
    annotations: Labels = Field(default_factory=dict)
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=64)

    @field_validator("ends_at")
    @classmethod
    def _zero_time_is_none(cls, value: datetime | None) -> datetime | None:
        return None if value is not None and value <= GO_ZERO_TIME else value

    @property
    def name(self) -> str:
        return self.labels.get("alertname") or "unnamed"


class WebhookPayload(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    version: Literal["4"]
    receiver: str
    status: Literal["firing", "resolved"]
    alerts: list[WebhookAlert]
    group_key: str = Field(alias="groupKey")
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Labels = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
