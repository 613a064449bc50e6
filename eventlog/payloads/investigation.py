"""Facts the responder's investigator and tool workers record."""

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from eventlog.payloads.base import Payload

JsonObject = dict[str, Any]


class InvestigationStarted(Payload):
    """The investigator took up an incident (again, if attempt > 1)."""

    model: str = Field(min_length=1)
    attempt: int = Field(default=1, ge=1)
    reason: str = "anomaly detected"


class AgentStep(Payload):
    """One model request or response of the agent, recorded verbatim."""

    turn: int = Field(ge=0)
    kind: Literal["request", "response"]
    model: str
    messages: list[JsonObject] = Field(default_factory=list)


class ToolRequested(Payload):
    """The agent asked for a diagnostic tool; a worker will run it."""

    tool_call_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    args: JsonObject = Field(default_factory=dict)
    turn: int = Field(default=0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    now: AwareDatetime | None = Field(
        default=None, description="the investigation's time: the tool looks at nothing later"
    )


class ToolCompleted(Payload):
    """A worker ran a tool and got a result."""

    tool_call_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    result: Any = None
    duration_ms: float = Field(ge=0)


class ToolFailed(Payload):
    """A tool raised, or did not answer within its timeout."""

    tool_call_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    error: str
    timed_out: bool = False
    duration_ms: float = Field(default=0.0, ge=0)


class Hypothesis(Payload):
    """One candidate root cause, with the tool calls that are its evidence."""

    cause: str = Field(min_length=1)
    confidence: float = Field(ge=0, le=1)
    evidence: list[str] = Field(default_factory=list, description="tool_call_ids")


class RootCauseConcluded(Payload):
    """The investigator's ranked answer (partial when tools timed out)."""

    summary: str
    hypotheses: list[Hypothesis] = Field(default_factory=list)
    partial: bool = False
