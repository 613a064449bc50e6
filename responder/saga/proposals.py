"""Proposing a remediation plan: `vigil propose`'s, the API's (later) and the report's.

A plan is checked against the catalog first (`plan.check_plan`). One that passes is recorded
as `RemediationProposed`, its mode the strictest of its steps' by the policy (each step's
risk on the service it touches) and the mode asked for: nobody can ask their way out of an
approval. One
that does not is recorded too, as `RemediationRejected` by `policy` with the reason: a
refusal is a fact of the incident like any other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from nats.js import JetStreamContext

from eventlog.envelope import new_event
from eventlog.history import incident_events
from eventlog.payloads import (
    AnomalyDetected,
    RemediationAction,
    RemediationProposed,
    RemediationRejected,
)
from eventlog.payloads.remediation import RemediationMode
from eventlog.publisher import EventPublisher
from responder.attempts import NoSuchIncident
from responder.saga.catalog import Catalog
from responder.saga.plan import PlanRefused, check_plan
from responder.saga.policy import Policy

SOURCE = "saga"
STRICTNESS: tuple[RemediationMode, ...] = ("auto", "dry_run", "approval")


@dataclass(frozen=True)
class Proposal:
    saga_id: str
    accepted: RemediationProposed | None
    refused: RemediationRejected | None


async def propose(
    js: JetStreamContext,
    incident_id: str,
    steps: list[RemediationAction],
    *,
    catalog: Catalog,
    policy: Policy,
    by: str,
    rationale: str = "",
    mode: RemediationMode | None = None,
) -> Proposal:
    """Record the plan for the incident, accepted or refused (see the module's docstring).
    NoSuchIncident when no anomaly was ever recorded for it."""
    service = await _service_of(js, incident_id)
    saga_id = f"saga-{uuid.uuid4().hex[:12]}"
    try:
        plan = check_plan(catalog, steps, incident_service=service)
    except PlanRefused as exc:
        refused = RemediationRejected(saga_id=saga_id, by="policy", reason=str(exc))
        await _record(js, incident_id, refused)
        return Proposal(saga_id, None, refused)
    # Each step by its own risk on the service it touches; the plan as its strictest step.
    modes = [policy.mode_for(t, r) for t, r in zip(plan.targets, plan.risks, strict=True)]
    if mode is not None:
        modes.append(mode)
    decided = max(modes, key=STRICTNESS.index)
    accepted = RemediationProposed(
        saga_id=saga_id, steps=plan.steps, mode=decided, risk=plan.risk,
        rationale=rationale or f"proposed by {by}",
    )  # fmt: skip
    await _record(js, incident_id, accepted)
    return Proposal(saga_id, accepted, None)


async def _service_of(js: JetStreamContext, incident_id: str) -> str | None:
    for stored in await incident_events(js, incident_id):
        if isinstance(stored.event.data, AnomalyDetected):
            return stored.event.data.service
    raise NoSuchIncident(f"no incident {incident_id!r}: no anomaly was recorded for it")


async def _record(
    js: JetStreamContext, incident_id: str, data: RemediationProposed | RemediationRejected
) -> None:
    await EventPublisher(js).publish(new_event(data, incident_id=incident_id, source=SOURCE))
