"""Facts the ingestion roles (Alertmanager webhook, metrics detector) record."""

from typing import Literal

from pydantic import AwareDatetime, Field

from eventlog.payloads.base import Payload

AnomalyOrigin = Literal["alertmanager", "detector"]
Labels = dict[str, str]
# Where a text was cut to keep an event under NATS's message size -> its length before (bytes).
Truncated = dict[str, int]
TRUNCATED = "texts cut to fit one NATS message: 'annotations.<name>' etc. -> bytes before"


class AnomalyDetected(Payload):
    """Something is wrong now: an alert fired or a detector rule breached."""

    origin: AnomalyOrigin
    name: str = Field(min_length=1, description="alertname or detector rule name")
    fingerprint: str = Field(min_length=1, description="stable id of the alerting series")
    starts_at: AwareDatetime
    labels: Labels = Field(default_factory=dict)
    annotations: Labels = Field(default_factory=dict)
    service: str | None = None
    severity: str | None = None
    value: float | None = None
    generator_url: str | None = None
    group_key: str | None = None
    returned: bool = Field(
        default=False,
        description="the same firing listed again after AnomalyWithdrawn: not a new anomaly",
    )
    truncated: Truncated = Field(default_factory=dict, description=TRUNCATED)


class AnomalyResolved(Payload):
    """The signal behind an earlier AnomalyDetected is healthy again."""

    origin: AnomalyOrigin
    name: str = Field(min_length=1)
    fingerprint: str = Field(min_length=1)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    labels: Labels = Field(default_factory=dict)
    value: float | None = None
    truncated: Truncated = Field(default_factory=dict, description=TRUNCATED)


class AnomalyWithdrawn(Payload):
    """Alertmanager stopped listing a firing alert in its group's complete notifications:
    silenced, inhibited, or resolved without Vigil being told. It no longer counts as firing;
    if it is listed again, an AnomalyDetected with `returned` says so."""

    origin: AnomalyOrigin
    name: str | None = None
    fingerprint: str = Field(min_length=1)
    starts_at: AwareDatetime
    group_key: str | None = None


class AnomalyPredicted(Payload):
    """A forecast says a series will cross its threshold within the horizon."""

    name: str = Field(min_length=1)
    fingerprint: str = Field(min_length=1)
    labels: Labels = Field(default_factory=dict)
    service: str | None = None
    severity: str | None = None
    current_value: float
    threshold: float
    predicted_crossing_at: AwareDatetime
    horizon_seconds: float = Field(gt=0)
