"""`related_alerts`: what else is firing at `now`, by service, nearest the onset first.

Two sources, merged by fingerprint: Alertmanager's active alerts (`GET /api/v2/alerts`, not
silenced or inhibited) when VIGIL_ALERTMANAGER_URL is set, and the anomalies Vigil holds
firing (`responder/tools/firing.py`), which also name their incident. Alertmanager can only
say what fires now, not at a past `now`: of its alerts, those that started after `now` are
left out. Alertmanager failing is said in `alertmanager_error`; Vigil's own are still told.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from responder.tools import Tool, ToolContext
from responder.tools.firing import FiringAnomaly, firing_anomalies

HTTP_TIMEOUT = 10.0
ACTIVE = {"active": "true", "silenced": "false", "inhibited": "false"}


class RelatedAlertsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(default=None, max_length=256, description="only this service")
    limit: int = Field(default=50, ge=1, le=200, description="alerts told, nearest the onset")


class AlertmanagerAlert(BaseModel):
    """The part of Alertmanager's v2 alert that is read."""

    model_config = ConfigDict(extra="ignore")

    fingerprint: str
    labels: dict[str, str]
    starts_at: AwareDatetime = Field(alias="startsAt")

    @property
    def service(self) -> str | None:
        # As Vigil's webhook names an alert's service: its `service` label, else its `job`.
        return self.labels.get("service") or self.labels.get("job")


ALERTS = TypeAdapter(list[AlertmanagerAlert])


@dataclass
class Related:
    name: str
    service: str | None
    severity: str | None
    starts_at: datetime
    incident_id: str | None
    sources: list[str]


async def related_alerts(ctx: ToolContext, args: RelatedAlertsArgs) -> dict[str, Any]:
    """Firing at `now`, grouped by service; at most `limit`, the nearest the onset."""
    onset = ctx.onset or ctx.now
    (held, (from_am, am_error)) = await asyncio.gather(
        firing_anomalies(ctx.js, ctx.now), _alertmanager_alerts(ctx)
    )
    found = _merged(held, [a for a in from_am if a.starts_at <= ctx.now])
    if args.service is not None:
        found = [r for r in found if r.service == args.service]
    found.sort(key=lambda r: abs((r.starts_at - onset).total_seconds()))
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for related in found[: args.limit]:
        groups.setdefault(related.service, []).append(_told(related, onset))
    told: dict[str, Any] = {
        "at": ctx.now.isoformat(), "onset": onset.isoformat(),
        "groups": [{"service": s, "alerts": alerts} for s, alerts in groups.items()],
        "total": len(found), "shown": min(len(found), args.limit),
    }  # fmt: skip
    if am_error is not None:
        told["alertmanager_error"] = am_error
    return told


async def _alertmanager_alerts(ctx: ToolContext) -> tuple[list[AlertmanagerAlert], str | None]:
    url = ctx.settings.alertmanager_url
    if not url:
        return [], None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as client:
            answer = await client.get("/api/v2/alerts", params=ACTIVE)
    except httpx.HTTPError as exc:
        return [], f"Alertmanager unreachable: {type(exc).__name__}: {exc}"
    if answer.status_code != 200:
        return [], f"Alertmanager answered {answer.status_code}: {answer.text[:200]}"
    try:
        return ALERTS.validate_json(answer.content), None
    except ValidationError as exc:
        return [], f"Alertmanager's answer is not a list of alerts: {exc.errors()[0]['msg']}"


def _merged(held: list[FiringAnomaly], from_am: list[AlertmanagerAlert]) -> list[Related]:
    """One entry per firing: an Alertmanager alert Vigil holds too is told once, with its
    incident."""
    found = {
        (a.fingerprint, a.starts_at): Related(
            name=a.name, service=a.service, severity=a.severity, starts_at=a.starts_at,
            incident_id=a.incident_id, sources=["vigil"],
        )
        for a in held
    }  # fmt: skip
    for alert in from_am:
        key = (alert.fingerprint, alert.starts_at)
        if key in found:
            found[key].sources.append("alertmanager")
        else:
            found[key] = Related(
                name=alert.labels.get("alertname", "?"), service=alert.service,
                severity=alert.labels.get("severity"), starts_at=alert.starts_at,
                incident_id=None, sources=["alertmanager"],
            )  # fmt: skip
    return list(found.values())


def _told(related: Related, onset: datetime) -> dict[str, Any]:
    minutes = (related.starts_at - onset).total_seconds() / 60
    return {"name": related.name, "severity": related.severity,
            "starts_at": related.starts_at.isoformat(), "incident_id": related.incident_id,
            "minutes_after_onset": round(minutes, 1), "sources": related.sources}  # fmt: skip


RELATED_ALERTS = Tool(
    name="related_alerts",
    description="What else is firing now (Alertmanager's active alerts and Vigil's own "
    "anomalies), by service, nearest the onset first, with minutes after the onset "
    "(negative: before).",
    args=RelatedAlertsArgs,
    run=related_alerts,
)
