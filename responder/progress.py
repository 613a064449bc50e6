"""Where an incident's investigation stands, folded from its events, and what to do next.

Pure: given the incident's events (in stream order), the time and the limits, `next_step`
says what the investigator does now. Every crash point is then a unit test: feed the events
up to it, look at the answer. No state is kept anywhere else; the events are the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventlog.envelope import Event
from eventlog.history import StoredEvent
from eventlog.payloads import (
    AgentStep,
    AnomalyDetected,
    AnomalyPredicted,
    InvestigationStarted,
    RootCauseConcluded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.payloads.investigation import RootCauseReport

OUTPUT_TOOL_PREFIX = "final_result"  # pydantic-ai's output tool(s); not ours to run


class Limits(BaseModel):
    """Bounds of one attempt; reaching one gives a report marked partial."""

    model_config = ConfigDict(frozen=True)

    model_requests: int = Field(default=12, ge=1)
    tool_calls: int = Field(default=40, ge=1)
    tokens: int = Field(default=400_000, ge=1, description="input + output")
    seconds: float = Field(default=300.0, gt=0, description="wall time of the attempt")
    tool_timeout_seconds: float = Field(default=30.0, gt=0)


@dataclass(frozen=True)
class Call:
    """A tool call the model asked for in a recorded step."""

    tool_call_id: str
    tool_name: str
    args: dict[str, Any]
    turn: int

    @property
    def key(self) -> bytes:
        """Same tool, same arguments: the same call (for reuse)."""
        return orjson.dumps([self.tool_name, self.args], option=orjson.OPT_SORT_KEYS)


Outcome = ToolCompleted | ToolFailed


@dataclass
class Attempt:
    started: InvestigationStarted
    started_at: datetime
    steps: list[AgentStep] = field(default_factory=list)
    last_step_seq: int = 0
    requested: dict[str, ToolRequested] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # the first one counts
    concluded: RootCauseConcluded | None = None

    @property
    def number(self) -> int:
        return self.started.attempt

    @property
    def turn(self) -> int:
        """Turns done: steps whose response asked for tools."""
        return sum(1 for s in self.steps if calls_in(s))

    def pending_calls(self) -> list[Call]:
        """The tool calls of the last step (the turn now waiting for its results)."""
        return calls_in(self.steps[-1]) if self.steps else []

    def usage(self) -> tuple[int, int, int]:
        """(model requests, input tokens, output tokens) so far."""
        inp = sum(s.input_tokens for s in self.steps)
        out = sum(s.output_tokens for s in self.steps)
        return len(self.steps), inp, out


@dataclass
class Investigation:
    """An incident as the investigator sees it."""

    incident_id: str
    trigger: Event | None = None  # the first anomaly: it starts attempt 1
    anomalies: list[Event] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    # Fences: the stream sequences of the incident's last AgentStep and InvestigationStarted.
    last_step_seq: int = 0
    last_started_seq: int = 0

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def attempt(self, number: int | None) -> Attempt | None:
        """The attempt of that number (None: the current one)."""
        if number is None:
            return self.current
        return next((a for a in self.attempts if a.number == number), None)


def fold(incident_id: str, events: list[StoredEvent]) -> Investigation:
    inv = Investigation(incident_id)
    for stored in events:
        apply(inv, stored.event, stored.seq)
    return inv


def apply(inv: Investigation, event: Event, seq: int) -> None:
    data = event.data
    match data:
        case AnomalyDetected() | AnomalyPredicted():
            inv.anomalies.append(event)
            if inv.trigger is None:
                inv.trigger = event
        case InvestigationStarted():
            inv.last_started_seq = seq
            current = inv.current
            if current is None or data.attempt > current.number:
                inv.attempts.append(Attempt(data, event.occurred_at))
        case AgentStep():
            inv.last_step_seq = seq
            if (attempt := inv.attempt(data.attempt)) is not None:
                attempt.steps.append(data)
        case ToolRequested():
            if (attempt := inv.attempt(data.attempt)) is not None:
                attempt.requested.setdefault(data.tool_call_id, data)
        case ToolCompleted() | ToolFailed():
            if (attempt := inv.attempt(data.attempt)) is not None:
                attempt.outcomes.setdefault(data.tool_call_id, data)
        case RootCauseConcluded():
            if (attempt := inv.attempt(data.attempt)) is not None:
                attempt.concluded = attempt.concluded or data


def recorded_answer(attempt: Attempt) -> RootCauseReport | None:
    """The report in the last recorded response, if it is one the agent's output checks would
    take (it fits RootCauseReport, and its evidence names calls of the attempt)."""
    if not attempt.steps:
        return None
    made = {c.tool_call_id for step in attempt.steps for c in calls_in(step)}
    for part in attempt.steps[-1].response.get("parts", []):
        if part.get("part_kind") != "tool-call":
            continue
        if not part["tool_name"].startswith(OUTPUT_TOOL_PREFIX):
            continue
        try:
            report = RootCauseReport.model_validate(_args(part.get("args")))
        except ValidationError:
            return None  # a retry the model was (or will be) asked for
        cited = {e for h in report.hypotheses for e in h.evidence}
        cited |= {e for r in report.ruled_out for e in r.evidence}
        return report if cited <= made else None
    return None


def calls_in(step: AgentStep) -> list[Call]:
    """The tool calls (not the output tool) a recorded response asked for."""
    calls = []
    for part in step.response.get("parts", []):
        if part.get("part_kind") != "tool-call":
            continue
        name = part["tool_name"]
        if name.startswith(OUTPUT_TOOL_PREFIX):
            continue
        calls.append(Call(part["tool_call_id"], name, _args(part.get("args")), step.turn))
    return calls


def _args(raw: Any) -> dict[str, Any]:
    """A provider sends arguments as a JSON string, a FunctionModel as a dict; anything that is
    not an object is passed on as it came, for the worker to refuse by name."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return {"_unparsed": raw}
    return raw if isinstance(raw, dict) else {"_unparsed": raw}


# -- what to do next ------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Open an attempt (attempt 1, for the incident's first anomaly)."""

    attempt: int


Reuse = tuple[Call, ToolCompleted]  # a call, and the earlier result that answers it


@dataclass(frozen=True)
class Request:
    """Ask the workers for these calls, and record these reuses of earlier results."""

    calls: list[Call]
    reuses: list[Reuse]


@dataclass(frozen=True)
class Wait:
    """Results are out; a later event moves the investigation on."""


@dataclass(frozen=True)
class Turn:
    """Run the model: the next turn (results all in), or the first."""


@dataclass(frozen=True)
class Conclude:
    """End the attempt (`attempt`; None: the current one) with what is known."""

    reason: str
    attempt: int | None = None


@dataclass(frozen=True)
class Answer:
    """The last recorded response holds a valid report: it is the answer (a call beside it
    is not made, as pydantic-ai does not make it when it takes the output)."""

    report: RootCauseReport


@dataclass(frozen=True)
class Done:
    """Nothing to do: no anomaly yet, or the attempt is concluded."""


NextStep = Start | Request | Wait | Turn | Conclude | Answer | Done


def next_step(inv: Investigation, now: datetime, limits: Limits) -> NextStep:
    attempt = inv.current
    if attempt is None:
        return Start(1) if inv.trigger is not None else Done()
    for earlier in inv.attempts[:-1]:  # asked for again before it ended: it ends now
        if earlier.concluded is None:
            return Conclude(f"superseded by attempt {attempt.number}", earlier.number)
    if attempt.concluded is not None:
        return Done()
    if now - attempt.started_at >= timedelta(seconds=limits.seconds):
        return Conclude(f"the attempt ran out of time ({limits.seconds:g}s)")
    report = recorded_answer(attempt)
    if report is not None:
        return Answer(report)
    calls = attempt.pending_calls()
    if not calls:
        return Turn()  # the first turn, or a response to process (an answer, a retry)
    ask, reuses = _to_request(attempt, calls)
    if len(attempt.requested) + len(ask) > limits.tool_calls:
        return Conclude(f"the attempt reached its limit of {limits.tool_calls} tool calls")
    if ask or reuses:
        return Request(ask, reuses)
    if all(c.tool_call_id in attempt.outcomes for c in calls):
        return Turn()
    return Wait()


def _to_request(attempt: Attempt, calls: list[Call]) -> tuple[list[Call], list[Reuse]]:
    """Which of the turn's calls to ask the workers for, and which answer with the recorded
    result of the same call made earlier in the attempt (agents loop; users pay for each
    run). A failed earlier call is run again; one still out is waited for."""
    first: dict[bytes, str] = {}  # same tool and arguments -> the attempt's first such call
    for step in attempt.steps:
        for call in calls_in(step):
            first.setdefault(call.key, call.tool_call_id)
    ask: list[Call] = []
    reuses: list[Reuse] = []
    for call in calls:
        if call.tool_call_id in attempt.requested or call.tool_call_id in attempt.outcomes:
            continue
        original = first[call.key]
        if original == call.tool_call_id:
            ask.append(call)
            continue
        earlier = attempt.outcomes.get(original)
        if isinstance(earlier, ToolCompleted):
            reuses.append((call, earlier))
        elif isinstance(earlier, ToolFailed):
            ask.append(call)  # a failure may not last
        # else the earlier call is still out: this one is answered with it when it is in
    return ask, reuses
