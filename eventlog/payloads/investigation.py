"""Facts the responder's investigator and tool workers record.

An investigation is a series of attempts on one incident (`InvestigationStarted.attempt`); an
attempt is a series of model turns, each one or more `AgentStep`s (a model request and its
response), the tool calls a turn asked for (`ToolRequested`) and their outcomes
(`ToolCompleted` / `ToolFailed`), and ends in one `RootCauseConcluded`.
"""

from typing import Any, Literal, get_args

from pydantic import AwareDatetime, Field

from eventlog.payloads.base import Payload

JsonObject = dict[str, Any]

Category = Literal[
    "deploy_or_config_change",
    "dependency_failure",
    "resource_saturation",
    "traffic_surge",
    "error_rate_regression",
    "memory_leak",
    "infrastructure_node",
    "unknown",
]
CATEGORIES: tuple[str, ...] = get_args(Category)


class InvestigationStarted(Payload):
    """The investigator took up an incident (again, if attempt > 1)."""

    model: str = Field(min_length=1)
    attempt: int = Field(default=1, ge=1)
    reason: str = "anomaly detected"
    now: AwareDatetime | None = Field(
        default=None, description="the investigation's time: its tools look at nothing later"
    )
    onset: AwareDatetime | None = Field(default=None, description="when the anomaly began")
    requested_by: str | None = None


class AgentStep(Payload):
    """One model request and its response, verbatim (pydantic-ai's message JSON): the
    `request` is the message sent after everything recorded before it (the prompt, the tool
    results of the turn, or a retry), so the steps of an attempt, in order, are its whole
    conversation. Usage is what the provider reported (cost in USD when it is known)."""

    attempt: int = Field(ge=1)
    step: int = Field(ge=0, description="the attempt's model requests, counted from 0")
    turn: int = Field(ge=0, description="a turn ends when the model asks for tools")
    model: str
    request: JsonObject
    response: JsonObject
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost: float | None = Field(default=None, ge=0)
    duration_ms: float = Field(default=0.0, ge=0)


class ToolRequested(Payload):
    """The agent asked for a diagnostic tool; a worker will run it."""

    tool_call_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    args: JsonObject = Field(default_factory=dict)
    attempt: int = Field(default=1, ge=1)
    turn: int = Field(default=0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    now: AwareDatetime | None = Field(
        default=None, description="the investigation's time: the tool looks at nothing later"
    )
    onset: AwareDatetime | None = Field(default=None, description="when the anomaly began")


class ToolCompleted(Payload):
    """A worker ran a tool and got a result (or the investigator reused the result of the same
    call made earlier in the attempt: `reused_from` names it)."""

    tool_call_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    result: Any = None
    duration_ms: float = Field(ge=0)
    reused_from: str | None = None
    attempt: int | None = Field(default=None, ge=1)


class ToolFailed(Payload):
    """A tool raised, or did not answer within its timeout (`timed_out`: recorded by the
    investigator, and a result that comes later is still recorded)."""

    tool_call_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    error: str
    timed_out: bool = False
    duration_ms: float = Field(default=0.0, ge=0)
    reused_from: str | None = None
    attempt: int | None = Field(default=None, ge=1)


class Hypothesis(Payload):
    """One candidate root cause, with the tool calls that are its evidence."""

    category: Category
    service: str | None = Field(default=None, description="the service it blames")
    confidence: float = Field(ge=0, le=1)
    explanation: str = Field(description="what the evidence shows, with its numbers")
    evidence: list[str] = Field(default_factory=list, description="tool_call_ids")


class RuledOut(Payload):
    """An alternative checked and rejected (the innocent deploy, the noisy alert)."""

    what: str = Field(min_length=1)
    category: Category | None = None
    service: str | None = None
    reason: str
    evidence: list[str] = Field(default_factory=list, description="tool_call_ids")


class RootCauseReport(Payload):
    """The investigation's answer: hypotheses ranked, most likely first."""

    summary: str = Field(description="one line")
    hypotheses: list[Hypothesis] = Field(min_length=1)
    ruled_out: list[RuledOut] = Field(default_factory=list)
    gaps: list[str] = Field(
        default_factory=list,
        description="what the conclusion did not see: tools that failed, timed out or are "
        "not configured",
    )
    partial: bool = Field(default=False, description="a limit ended the investigation early")


class RootCauseConcluded(Payload):
    """The attempt's report, and what it took."""

    attempt: int = Field(default=1, ge=1)
    model: str = ""
    report: RootCauseReport
    partial_reason: str | None = None
    model_requests: int = Field(default=0, ge=0)
    tool_calls: int = Field(default=0, ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost: float | None = Field(default=None, ge=0)
