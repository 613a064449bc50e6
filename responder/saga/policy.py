"""The remediation policy (VIGIL_POLICY, sample: deploy/policy.yaml): per service and risk,
`auto`, `approval` or `dry_run`; a rate limit of remediations per service per hour; the
approval's expiry; and a global pause.

A service the policy does not list gets `approval` whatever the risk: nothing runs on its own
where no one said it may.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from eventlog.payloads.remediation import RemediationMode
from responder.saga.catalog import Risk
from responder.tools.config_file import load_config_file

UNKNOWN_SERVICE: RemediationMode = "approval"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServicePolicy(_Strict):
    """The mode for each risk of action on one service."""

    low: RemediationMode = "auto"
    medium: RemediationMode = "approval"
    high: RemediationMode = "approval"


class Policy(_Strict):
    services: dict[str, ServicePolicy] = Field(default_factory=dict)
    max_per_service_per_hour: int = Field(default=3, ge=0)
    approval_expiry_minutes: float = Field(default=30.0, gt=0)
    paused: bool = False

    def mode_for(self, service: str | None, risk: Risk) -> RemediationMode:
        rules = self.services.get(service) if service is not None else None
        if rules is None:
            return UNKNOWN_SERVICE
        mode: RemediationMode = getattr(rules, risk)
        return mode

    def over_rate(self, started: Iterable[datetime], now: datetime) -> bool:
        """Whether another remediation of a service whose sagas `started` at these times
        would pass the hourly limit (the hour ending `now`)."""
        since = now - timedelta(hours=1)
        return sum(1 for at in started if since < at <= now) >= self.max_per_service_per_hour

    @property
    def approval_expiry(self) -> timedelta:
        return timedelta(minutes=self.approval_expiry_minutes)


def load_policy(path: Path | None) -> Policy:
    """The policy VIGIL_POLICY names, or with none the default: every service unknown, so
    every plan waits for approval."""
    if path is None:
        return Policy()
    return load_config_file(path, Policy, "VIGIL_POLICY")
