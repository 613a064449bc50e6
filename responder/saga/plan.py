"""The check every proposed plan passes before anything else: each step an action of the
catalog, its parameters valid by the action's schema, its target inside the action's scope,
its compensation the catalog's. Nothing a model writes or an alert carries can widen that:
the plan is only ever the catalog's actions with parameters the catalog allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventlog.payloads.remediation import RemediationAction
from responder.saga.catalog import RISKS, Catalog, Compensation, Risk

MAX_STEPS = 20


def _control_characters(value: object, where: str = "") -> str | None:
    """Why a text among the params holds a control character (a newline that `$` in a
    schema's pattern lets through, say), or None."""
    if isinstance(value, str):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            return f"{where or 'a value'}: {value!r} holds a control character"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, inner in items:
        found = _control_characters(inner, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


class PlanRefused(ValueError):
    """The plan names something outside the catalog or its scope; the message says what."""


@dataclass(frozen=True)
class CheckedPlan:
    steps: list[RemediationAction]  # each with the catalog's compensation (None: irreversible)
    risks: list[Risk]  # each step's
    targets: list[str]  # the service each step touches

    @property
    def risk(self) -> Risk:
        """The highest of its steps'."""
        return max(self.risks, key=RISKS.index)


def check_plan(
    catalog: Catalog, steps: list[RemediationAction], *, incident_service: str | None
) -> CheckedPlan:
    """The plan as the catalog allows it, or PlanRefused with the first step's reason."""
    if not steps:
        raise PlanRefused("the plan has no steps")
    if len(steps) > MAX_STEPS:
        raise PlanRefused(f"the plan has {len(steps)} steps; at most {MAX_STEPS}")
    checked, risks, targets = [], [], []
    for i, step in enumerate(steps):
        where = f"step {i} ({step.action!r})"
        action = catalog.get(step.action)
        if action is None:
            raise PlanRefused(f"{where}: no such action in the catalog")
        wrong = action.check_params(step.params) or _control_characters(step.params)
        if wrong is not None:
            raise PlanRefused(f"{where}: params: {wrong}")
        target = step.params[action.scope.target]
        if not isinstance(target, str) or not action.scope.allows(target, incident_service):
            scope = (
                f"the incident's service ({incident_service})"
                if action.scope.incident_service_only
                else f"services matching {action.scope.services!r}"
            )
            raise PlanRefused(f"{where}: {action.scope.target}={target!r} is outside {scope}")
        undo = action.compensation
        compensation = undo.action if isinstance(undo, Compensation) else None
        if step.compensation is not None and step.compensation != compensation:
            raise PlanRefused(
                f"{where}: its compensation is {compensation or 'irreversible'} by the catalog, "
                f"not {step.compensation!r}"
            )
        checked.append(step.model_copy(update={"compensation": compensation}))
        risks.append(action.risk)
        targets.append(target)
    return CheckedPlan(checked, risks, targets)
