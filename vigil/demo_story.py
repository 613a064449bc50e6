"""How `vigil demo` tells what the stream tells: the Teller (a terminal or plain lines) and the
Story (every event told as it comes, and what the demo waits for, read from them alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from rich.console import Console
from rich.markup import escape

from eventlog.envelope import Event, MalformedEvent, parse_event
from eventlog.payloads import (
    AnomalyDetected,
    AnomalyResolved,
    AnomalyWithdrawn,
    ChangeRecorded,
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    IncidentResolved,
    InvestigationStarted,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RemediationRejected,
    RootCauseConcluded,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
    VerificationFailed,
    VerificationMeasured,
    VerificationPassed,
)
from responder.saga.catalog import Catalog, Verification


class DemoError(Exception):
    """The demo cannot go on; the message says why, in one line."""


class Teller:
    """Where the story goes: a terminal (rich: colours, a spinner on what is awaited) or plain
    lines (a pipe, CI), each line prefixed with the seconds since the demo began."""

    def __init__(self, console: Console, *, live: bool) -> None:
        self.console = console
        self.live = live
        self.began = time.monotonic()
        self._status = console.status("") if live else None

    def say(self, text: str, style: str = "") -> None:
        stamp = f"+{time.monotonic() - self.began:5.1f}s "
        if self.live:
            styled = f"[dim]{stamp}[/]" + (f"[{style}]" if style else "") + escape(text)
            self.console.print(styled, highlight=False)
        else:
            print(stamp + text, flush=True)

    def plain(self, text: str, style: str = "") -> None:
        """A line without a time stamp (a report's details, the queries)."""
        if self.live:
            self.console.print((f"[{style}]" if style else "") + escape(text), highlight=False)
        else:
            print(text, flush=True)

    def waiting(self, text: str | None) -> None:
        """What the demo waits for (a spinner on a terminal; nothing in plain lines)."""
        if self._status is None:
            return
        if text is None:
            self._status.stop()
        else:
            self._status.update(escape(text))
            self._status.start()


@dataclass
class SagaTale:
    """One remediation as told so far: its incident, its steps, how it is verified (from the
    catalog: the last step's action that says), its measurements, and how it ended."""

    incident: str
    steps: list[RemediationAction] = field(default_factory=list)
    verify: Verification | None = None
    measured: list[bool] = field(default_factory=list)  # each measurement: ok?
    ended: str | None = None  # the event that ended it: SagaCompleted, SagaCompensated, ...
    reason: str = ""


@dataclass
class Story:
    """What the stream has told so far. `reported`: every incident that opened (the broken
    service's among them) has its report."""

    teller: Teller
    broken: str
    catalog: Catalog | None = None
    services: dict[str, str] = field(default_factory=dict)  # incident -> service
    investigating: set[str] = field(default_factory=set)
    concluded: dict[str, RootCauseConcluded] = field(default_factory=dict)
    tools: dict[tuple[str, str], str] = field(default_factory=dict)  # (incident, call) -> tool
    detected: list[tuple[str, str | None]] = field(default_factory=list)  # (incident, service)
    firing: dict[str, str] = field(default_factory=dict)  # alert fingerprint -> incident
    sagas: dict[str, SagaTale] = field(default_factory=dict)
    resolved: dict[str, IncidentResolved] = field(default_factory=dict)
    _news: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_message(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data)
        except MalformedEvent:
            return  # the projector dead-letters it; nothing to tell
        self.tell(event)
        async with self._news:
            self._news.notify_all()

    async def until(self, told: Callable[[], bool]) -> None:
        """Returns once `told()` holds, looked at again after each event."""
        async with self._news:
            await self._news.wait_for(told)

    async def news(self, timeout: float) -> None:
        """Returns at the next event, or after `timeout` seconds without one."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._news:
                await self._news.wait()

    @property
    def reported(self) -> bool:
        broken = [i for i, s in self.services.items() if s == self.broken]
        told = set(self.concluded)
        return any(i in told for i in broken) and self.investigating <= told

    def sagas_of(self, incident: str) -> list[SagaTale]:
        return [tale for tale in self.sagas.values() if tale.incident == incident]

    def _who(self, incident: str) -> str:
        service = self.services.get(incident)
        return f"{incident} ({service})" if service else incident

    def _tag(self, incident: str) -> str:
        """`checkout: `: whose investigation a tool call is (several run at once)."""
        return f"{self.services.get(incident, incident)}: "

    def tell(self, event: Event) -> None:
        data = event.data
        if isinstance(data, ChangeRecorded | AnomalyDetected | AnomalyResolved | AnomalyWithdrawn):
            self.tell_alert(event)
        elif isinstance(data, InvestigationStarted | ToolRequested | ToolCompleted | ToolFailed):
            self.tell_investigation(event)
        elif isinstance(data, RootCauseConcluded):
            self.concluded[event.incident_id] = data
            self.tell_report(event.incident_id, data)
        else:
            self.tell_remediation(event)

    def tell_alert(self, event: Event) -> None:
        say, data, incident = self.teller.say, event.data, event.incident_id
        if isinstance(data, ChangeRecorded):
            say(f"change   {data.service}: {data.description} (ChangeRecorded)", "magenta")
        elif isinstance(data, AnomalyDetected):
            if data.service and incident not in self.services:
                self.services[incident] = data.service
            self.detected.append((incident, data.service))
            self.firing[data.fingerprint] = incident
            what = data.annotations.get("summary") or f"value {data.value}"
            say(
                f"alert    {data.name} firing on {data.service}: {what} "
                f"(AnomalyDetected from {data.origin}, incident {incident})",
                "bold red",
            )
        elif isinstance(data, AnomalyResolved | AnomalyWithdrawn):
            self.firing.pop(data.fingerprint, None)
            how = "resolved" if isinstance(data, AnomalyResolved) else "withdrawn"
            say(f"alert    {data.name or 'an alert'} on {self.services.get(incident, '?')} "
                f"{how} ({type(data).__name__}, incident {incident})", "green")  # fmt: skip

    def tell_investigation(self, event: Event) -> None:
        say, data, incident = self.teller.say, event.data, event.incident_id
        if isinstance(data, InvestigationStarted):
            self.investigating.add(incident)
            onset = data.onset.strftime("%H:%M:%S") if data.onset else "unknown"
            say(
                f"investigation of {self._who(incident)}: attempt {data.attempt} with "
                f"{data.model}, onset {onset} (InvestigationStarted)",
                "cyan",
            )
        elif isinstance(data, ToolRequested):
            self.tools[(incident, data.tool_call_id)] = data.tool_name
            args = json.dumps(data.args, separators=(",", ":"))
            say(f"tool     {self._tag(incident)}{data.tool_name} {args} started "
                f"[{data.tool_call_id}] (ToolRequested)")  # fmt: skip
        elif isinstance(data, ToolCompleted):
            how = f"reused {data.reused_from}" if data.reused_from else f"{data.duration_ms:.0f} ms"
            say(f"tool     {self._tag(incident)}{data.tool_name} completed in {how} "
                f"[{data.tool_call_id}] (ToolCompleted)", "green")  # fmt: skip
        elif isinstance(data, ToolFailed):
            why = "timed out" if data.timed_out else data.error.splitlines()[0][:160]
            say(f"tool     {self._tag(incident)}{data.tool_name} failed after "
                f"{data.duration_ms:.0f} ms: {why} [{data.tool_call_id}] (ToolFailed)",
                "yellow")  # fmt: skip

    def tell_report(self, incident: str, concluded: RootCauseConcluded) -> None:
        report, plain = concluded.report, self.teller.plain
        self.teller.say(
            f"report   {self._who(incident)}: {report.summary} (RootCauseConcluded, attempt "
            f"{concluded.attempt}{', partial' if report.partial else ''})",
            "bold",
        )
        for rank, h in enumerate(report.hypotheses, 1):
            style = "bold green" if rank == 1 else ""
            plain(f"    {rank}. {h.category} of {h.service or 'no service'}, confidence "
                  f"{h.confidence:.2f}: {h.explanation}", style)  # fmt: skip
            plain(f"       evidence: {', '.join(h.evidence) or 'none'}", "dim")
        for r in report.ruled_out:
            plain(f"    ruled out: {r.what}: {r.reason} "
                  f"(evidence: {', '.join(r.evidence) or 'none'})", "dim")  # fmt: skip
        for gap in report.gaps:
            plain(f"    gap: {gap}", "yellow")
        if concluded.partial_reason:
            plain(f"    partial: {concluded.partial_reason}", "yellow")

    # -- remediation --------------------------------------------------------------------------

    def tell_remediation(self, event: Event) -> None:
        data, incident = event.data, event.incident_id
        saga_id = getattr(data, "saga_id", None)
        if saga_id is None:
            if isinstance(data, IncidentResolved):
                self.resolved[incident] = data
                self.teller.say(f"resolved {self._who(incident)}: {data.how} by {data.by} "
                                "(IncidentResolved)", "bold green")  # fmt: skip
            return
        tale = self.sagas.setdefault(saga_id, SagaTale(incident))
        say, tag, at = self.teller.say, self._tag(incident), f"[{saga_id}]"
        match data:
            case RemediationProposed():
                tale.steps, tale.verify = data.steps, self._verification(data.steps)
                by = data.rationale.split(": ", 1)[0]  # "recommended by ...", "proposed by ..."
                say(f"remedy   {tag}{_plan(data.steps)} proposed, mode {data.mode}, {data.risk} "
                    f"risk, {by} {at} (RemediationProposed)", "bold cyan")  # fmt: skip
            case RemediationApproved():
                say(f"remedy   {tag}approved by {data.by} {at} (RemediationApproved)", "cyan")
            case RemediationRejected():
                tale.ended, tale.reason = "RemediationRejected", data.reason
                say(f"refused  {tag}{data.reason} {at} (RemediationRejected by {data.by})",
                    "yellow")  # fmt: skip
            case SagaStarted():
                tale.steps = data.steps
                n = len(data.steps)
                dry = ", a dry run" if data.dry_run else ""
                say(f"saga     {tag}started: {n} step{'s' * (n > 1)} on "
                    f"{', '.join(data.services)}{dry} {at} (SagaStarted)", "cyan")  # fmt: skip
            case SagaStepStarted() | SagaStepSucceeded() | SagaStepFailed():
                self._tell_step(tale, tag, data)
            case VerificationMeasured() | VerificationPassed() | VerificationFailed():
                self._tell_verification(tale, tag, data)
            case CompensationStarted() | CompensationSucceeded() | CompensationFailed():
                self._tell_compensation(tale, tag, data)
            case CompensationEscalated():
                say(f"undo     {tag}step {self._of(tale, data.step)} escalated to a human after "
                    f"{data.attempts} tries: {data.error} (CompensationEscalated)",
                    "bold red")  # fmt: skip
            case SagaCompleted():
                tale.ended = "SagaCompleted"
                say(f"saga     {tag}completed {at} (SagaCompleted)", "bold green")
            case SagaCompensated():
                tale.ended, tale.reason = "SagaCompensated", data.reason
                say(f"saga     {tag}compensated, every step undone: {data.reason} {at} "
                    "(SagaCompensated)", "bold yellow")  # fmt: skip

    def _tell_step(self, tale: SagaTale, tag: str, data: Any) -> None:
        say, n = self.teller.say, self._of(tale, data.step)
        if isinstance(data, SagaStepStarted):
            say(f"step     {tag}{n} {data.action} {_json(data.params)} started, idempotency key "
                f"{data.idempotency_key} (SagaStepStarted)")  # fmt: skip
        elif isinstance(data, SagaStepSucceeded):
            say(f"step     {tag}{n} {data.action} succeeded: {_json(data.output)} "
                "(SagaStepSucceeded)", "green")  # fmt: skip
        else:
            say(f"step     {tag}{n} {data.action} failed: {data.error} (SagaStepFailed)", "yellow")

    def _tell_verification(self, tale: SagaTale, tag: str, data: Any) -> None:
        say, spec = self.teller.say, tale.verify
        condition = spec.success_condition if spec else "its condition"
        if isinstance(data, VerificationMeasured):
            tale.measured.append(data.ok)
            of = f"/{spec.count}" if spec else ""
            value = "no value" if data.observed is None else f"{data.observed:.3f}"
            verdict = "meets" if data.ok else "fails"
            error = f" ({data.error})" if data.error else ""
            say(f"verify   {tag}measurement {data.index + 1}{of}: {value}, {verdict} `{condition}`"
                f"{error} (VerificationMeasured)", "green" if data.ok else "yellow")  # fmt: skip
            if data.index == 0:
                self.teller.plain(f"    query: {data.query}", "dim")
        elif isinstance(data, VerificationPassed):
            met, n = sum(tale.measured), len(tale.measured)
            measured = n and data.check.endswith(condition)  # not "the alert resolved"
            how = f"{met} of {n} measurements met `{condition}`" if measured else data.check
            say(f"verify   {tag}passed: {how} (VerificationPassed)", "bold green")
        else:
            say(f"verify   {tag}failed: {data.reason or data.check} (VerificationFailed)",
                "bold yellow")  # fmt: skip

    def _tell_compensation(self, tale: SagaTale, tag: str, data: Any) -> None:
        say, n = self.teller.say, self._of(tale, data.step)
        if isinstance(data, CompensationStarted):
            say(f"undo     {tag}step {n} undone by {data.action} {_json(data.params)}, "
                f"idempotency key {data.idempotency_key} (CompensationStarted)",
                "magenta")  # fmt: skip
        elif isinstance(data, CompensationSucceeded):
            say(f"undo     {tag}step {n} undone (CompensationSucceeded)", "green")
        else:
            say(f"undo     {tag}step {n} not undone: {data.error} (CompensationFailed)", "yellow")

    @staticmethod
    def _of(tale: SagaTale, step: int) -> str:
        """`2/3`: the step's place in its saga, from 1."""
        return f"{step + 1}/{len(tale.steps)}" if tale.steps else str(step + 1)

    def _verification(self, steps: list[RemediationAction]) -> Verification | None:
        """How the orchestrator verifies these steps: the last one's action that says."""
        found = None
        for step in steps:
            action = self.catalog.get(step.action) if self.catalog else None
            if action is not None and action.verify is not None:
                found = action.verify
        return found


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _plan(steps: list[RemediationAction]) -> str:
    return ", then ".join(f"{s.action} {_json(s.params)}" for s in steps)
