"""Facts of saga-style remediation: proposal, approval, steps, compensation."""

from typing import Annotated, Any, Literal

from pydantic import Field

from eventlog.payloads.base import Payload

JsonObject = dict[str, Any]
RemediationMode = Literal["auto", "approval", "dry_run"]
# One token of a subject and of a key-value key: letters, digits, `_` and `-`.
SagaId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class RemediationAction(Payload):
    """One step of a plan, taken from the action catalog."""

    action: str = Field(min_length=1)
    params: JsonObject = Field(default_factory=dict)
    compensation: str | None = None


class RemediationProposed(Payload):
    saga_id: SagaId
    steps: list[RemediationAction] = Field(min_length=1)
    mode: RemediationMode
    risk: Literal["low", "medium", "high"] = "low"
    rationale: str = ""
    by: str = Field(default="", description="who proposed it: a person, or `responder`")


class RemediationApproved(Payload):
    saga_id: SagaId
    by: str = Field(min_length=1)
    comment: str = ""


class RemediationRejected(Payload):
    saga_id: SagaId
    by: str = Field(min_length=1)
    reason: str = ""


class SagaStarted(Payload):
    saga_id: SagaId
    steps: list[RemediationAction] = Field(min_length=1)
    dry_run: bool = False
    services: list[str] = Field(default_factory=list, description="the services its steps touch")


class SagaStep(Payload):
    """Fields every per-step saga fact shares."""

    saga_id: SagaId
    step: int = Field(ge=0)
    action: str = Field(min_length=1)


class SagaStepStarted(SagaStep):
    params: JsonObject = Field(default_factory=dict)
    idempotency_key: str = Field(min_length=1)


class SagaStepSucceeded(SagaStep):
    output: JsonObject = Field(default_factory=dict)


class SagaStepFailed(SagaStep):
    error: str
    uncertain: bool = Field(
        default=False, description="it may have taken effect (a timeout, a lost answer)"
    )


class CompensationStarted(SagaStep):
    """`action` is the compensating action, run with `params` under `idempotency_key`."""

    params: JsonObject = Field(default_factory=dict)
    idempotency_key: str | None = None


class CompensationSucceeded(SagaStep):
    pass


class CompensationFailed(SagaStep):
    error: str
    uncertain: bool = Field(
        default=False, description="it may have taken effect (a timeout, a lost answer)"
    )


class CompensationEscalated(SagaStep):
    """A compensation failed every try: a human must undo the step (the notifier says so)."""

    attempts: int = Field(ge=1)
    error: str


class VerificationMeasured(Payload):
    """One measurement of the verification (Argo Rollouts' analysis run): `index` from 0,
    `observed` the query's value (None: no data, or the query failed: see `error`)."""

    saga_id: SagaId
    index: int = Field(ge=0)
    query: str
    observed: float | None = None
    ok: bool
    error: str | None = None


class VerificationPassed(Payload):
    saga_id: SagaId
    check: str
    observed: float | None = None


class VerificationFailed(Payload):
    saga_id: SagaId
    check: str
    observed: float | None = None
    reason: str = ""


class SagaCompleted(Payload):
    saga_id: SagaId


class SagaCompensated(Payload):
    saga_id: SagaId
    reason: str = ""
