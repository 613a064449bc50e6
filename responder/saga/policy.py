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
STRICTNESS: tuple[RemediationMode, ...] = ("auto", "dry_run", "approval")


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
    approval_expiry_minutes: float = Field(
        default=30.0, gt=0, description="also how long an unapproved plan may wait to start"
    )
    paused: bool = False
    min_confidence_to_propose: float = Field(
        default=0.6, ge=0, le=1, description="a report's top hypothesis below this: no proposal"
    )

    def mode_for(self, service: str | None, risk: Risk) -> RemediationMode:
        rules = self.services.get(service) if service is not None else None
        if rules is None:
            return UNKNOWN_SERVICE
        mode: RemediationMode = getattr(rules, risk)
        return mode

    def mode_for_plan(
        self, targets: list[str], risks: list[Risk], asked: RemediationMode | None = None
    ) -> RemediationMode:
        """The strictest of each step's mode (its risk on the service it touches) and the mode
        asked for: nobody can ask their way out of an approval."""
        modes = [self.mode_for(t, r) for t, r in zip(targets, risks, strict=True)]
        if asked is not None:
            modes.append(asked)
        return max(modes, key=STRICTNESS.index)

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
