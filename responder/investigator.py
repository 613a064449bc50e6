"""The investigator: a durable consumer of the events that move an investigation forward.

On each of an incident's anomalies, tool outcomes and attempts, it reads the incident's events
from JetStream, folds them (`responder.progress`) and does what comes next: open an attempt,
ask the workers for the tools a recorded step called for, run the next model turn when every
result of the last one is in, or conclude. Nothing lives in memory across a tool round trip,
so any replica can take the next turn and a crash loses nothing.

Replicas that take the same incident at once are kept to one story: an `AgentStep` is only
appended if the incident's last step is still the one its writer saw (JetStream's expected
last subject sequence), and every other event it derives has an id derived from what it is
about (JetStream drops the second copy). A writer that loses reads the events again and goes
on from what the winner recorded.

Timers survive a crash because JetStream keeps them: a `ToolRequested` (also delivered here)
comes back at its deadline (`nak` with a delay), and if no outcome is recorded by then the
call is recorded as failed (`timed_out`); an `InvestigationStarted` comes back when the
attempt's wall time is up.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from pydantic_ai import DeferredToolRequests
from pydantic_ai.exceptions import AgentRunError, UsageLimitExceeded
from pydantic_ai.usage import RunUsage, UsageLimits

from eventlog.consumer import ConsumerSpec, Received, RedeliverLater, consume
from eventlog.envelope import Event, new_event, subject_for
from eventlog.history import incident_events
from eventlog.payloads import (
    AgentStep,
    AnomalyDetected,
    InvestigationStarted,
    Payload,
    RootCauseConcluded,
    ToolCompleted,
    ToolFailed,
    ToolRequested,
)
from eventlog.payloads.investigation import RootCauseReport
from eventlog.publisher import EventPublisher, WrongLastSequence
from responder import agent as turn
from responder.agent import AgentStepDraft, InvestigatorAgent, TurnDeps
from responder.progress import (
    Answer,
    Attempt,
    Call,
    Conclude,
    Done,
    Investigation,
    Limits,
    Request,
    Reuse,
    Start,
    Turn,
    Wait,
    apply,
    fold,
    next_step,
)
from responder.report import finish, partial_report
from responder.worker import outcome_id

log = logging.getLogger(__name__)
SOURCE = "responder"
DURABLE = "investigator"
NAMESPACE = uuid.UUID("6c1f7a0e-2b7d-4e51-9d0c-3a8e5f4b2c17")
MAX_MOVES = 64  # steps one delivery may take before leaving the rest to the next one
TRIGGERS = (
    "AnomalyDetected",
    "AnomalyPredicted",
    "InvestigationStarted",
    "ToolRequested",
    "ToolCompleted",
    "ToolFailed",
)


def investigator_spec(concurrency: int = 8, limits: Limits | None = None) -> ConsumerSpec:
    """A new investigator starts at the next event: it does not investigate all history."""
    limits = limits or Limits()
    return ConsumerSpec(
        durable=DURABLE,
        filter_subject=tuple(subject_for("*", t) for t in TRIGGERS),
        concurrency=concurrency,
        deliver="new",
        # A turn's model run is bounded by the attempt's wall time; past it, a retry.
        handler_timeout=limits.seconds + 60,
        # Heartbeats keep a long turn ours; a replica that died is noticed this soon.
        ack_wait=10.0,
    )


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Investigator:
    """Takes each delivery one step further; `now_of` gives an investigation's time from its
    trigger (the wall clock, or a past moment in an evaluation)."""

    js: JetStreamContext
    agent: InvestigatorAgent
    model_name: str
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], datetime] = wall_clock
    now_of: Callable[[Event], datetime] | None = None

    def __post_init__(self) -> None:
        self.publisher = EventPublisher(self.js)
        self.turns_taken = 0  # model runs this replica made (each one or more requests)

    async def handle(self, received: Received) -> None:
        data = received.event.data
        if isinstance(data, ToolRequested):
            await self._tool_deadline(received.event, data)
            return
        inv = await self.advance(received.event.incident_id)
        if isinstance(data, InvestigationStarted):
            self._wall_time_timer(inv, data.attempt)

    async def advance(self, incident_id: str) -> Investigation:
        """Take the incident's investigation as far as it goes now; returns where it stands."""
        inv = fold(incident_id, await incident_events(self.js, incident_id))
        for _ in range(MAX_MOVES):
            match next_step(inv, self.clock(), self.limits):
                case Done() | Wait():
                    return inv
                case Start(attempt=number):
                    if not await self._start(inv, number):
                        inv = fold(incident_id, await incident_events(self.js, incident_id))
                case Request(calls=calls, reuses=reuses):
                    await self._request(inv, calls, reuses)
                case Conclude(reason=reason, attempt=number):
                    await self._conclude(inv, None, reason, number)
                case Answer(report=report):
                    await self._conclude(inv, report, None)
                case Turn():
                    if not await self._turn(inv):
                        inv = fold(incident_id, await incident_events(self.js, incident_id))
        log.warning("incident %s: still moving after %d steps", incident_id, MAX_MOVES)
        return inv

    # -- the moves --------------------------------------------------------------------------

    async def _start(self, inv: Investigation, number: int) -> bool:
        trigger = inv.trigger
        assert trigger is not None
        onset = trigger.data.starts_at if isinstance(trigger.data, AnomalyDetected) else None
        now = self.now_of(trigger) if self.now_of else self.clock()
        started = InvestigationStarted(model=self.model_name, attempt=number, now=now, onset=onset)
        event = self._event(inv, started, f"{number}|started", caused_by=trigger)
        return await self._append_attempt(inv, event)

    async def _append_attempt(self, inv: Investigation, event: Event) -> bool:
        try:
            ack = await self.publisher.publish_after(event, inv.last_started_seq)
        except WrongLastSequence:
            return False  # someone opened it first: read it back
        apply(inv, event, ack.seq)
        return True

    async def _request(self, inv: Investigation, calls: list[Call], reuses: list[Reuse]) -> None:
        attempt = inv.current
        assert attempt is not None
        events = []
        for call in calls:
            asked = ToolRequested(
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                args=call.args,
                attempt=attempt.number,
                turn=call.turn,
                now=attempt.started.now,
                onset=attempt.started.onset,
                timeout_seconds=self.limits.tool_timeout_seconds,
            )
            events.append(self._event(inv, asked, f"{attempt.number}|asked|{call.tool_call_id}"))
        for call, earlier in reuses:
            reused = ToolCompleted(
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                result=earlier.result,
                duration_ms=0.0,
                reused_from=earlier.tool_call_id,
                attempt=attempt.number,
            )
            events.append(
                new_event(
                    reused,
                    incident_id=inv.incident_id,
                    source=SOURCE,
                    event_id=outcome_id(inv.incident_id, attempt.number, call.tool_call_id),
                )
            )
        acks = await self.publisher.publish_many(events)
        for event, ack in zip(events, acks, strict=True):
            apply(inv, event, ack.seq)

    async def _turn(self, inv: Investigation) -> bool:
        """One model run; False when another writer extended the story first."""
        attempt = inv.current
        assert attempt is not None and inv.trigger is not None
        deps = TurnDeps(record=lambda draft: self._record(inv, attempt, draft))
        requests, tokens_in, tokens_out = attempt.usage()
        kwargs: dict[str, Any] = {
            "deps": deps,
            "usage": RunUsage(requests=requests, input_tokens=tokens_in, output_tokens=tokens_out),
            "usage_limits": UsageLimits(
                request_limit=self.limits.model_requests, total_tokens_limit=self.limits.tokens
            ),
        }
        if not attempt.steps:
            now = attempt.started.now or attempt.started_at
            kwargs["user_prompt"] = turn.prompt(
                inv.trigger, inv.anomalies, now, attempt=attempt.number
            )
        else:
            kwargs["message_history"] = turn.history(attempt)
            if attempt.pending_calls():
                kwargs["deferred_tool_results"] = turn.results(attempt)
        left = self.limits.seconds - (self.clock() - attempt.started_at).total_seconds()
        self.turns_taken += 1
        try:
            async with asyncio.timeout(max(left, 0.001)):
                result = await self.agent.run(**kwargs)
        except WrongLastSequence:
            return False
        except TimeoutError:
            limit = self.limits.seconds
            await self._conclude(inv, None, f"the attempt ran out of time ({limit:g}s)")
            return True
        except UsageLimitExceeded as exc:
            await self._conclude(inv, None, str(exc).split(". Consider")[0])
            return True
        except AgentRunError as exc:  # a model that failed, or answered garbage, again
            log.warning("incident %s: the model failed: %s", inv.incident_id, exc)
            await self._conclude(inv, None, f"the model failed: {_one_line(exc)}")
            return True
        if isinstance(result.output, RootCauseReport):
            await self._conclude(inv, result.output, None)
        else:
            assert isinstance(result.output, DeferredToolRequests)  # the step holds the calls
        return True

    async def _record(self, inv: Investigation, attempt: Attempt, draft: AgentStepDraft) -> None:
        step = AgentStep(
            attempt=attempt.number,
            step=len(attempt.steps),
            turn=attempt.turn,
            model=self.model_name,
            request=draft.request,
            response=draft.response,
            input_tokens=draft.input_tokens,
            output_tokens=draft.output_tokens,
            cost=draft.cost,
            duration_ms=draft.duration_ms,
        )
        event = new_event(step, incident_id=inv.incident_id, source=SOURCE)
        ack = await self.publisher.publish_after(event, inv.last_step_seq)
        apply(inv, event, ack.seq)

    async def _conclude(
        self,
        inv: Investigation,
        report: RootCauseReport | None,
        reason: str | None,
        number: int | None = None,
    ) -> None:
        """Record the attempt's report (the current attempt's, unless `number` says)."""
        attempt = inv.attempt(number)
        assert attempt is not None
        if report is None:
            report = partial_report(inv, attempt)
        requests, tokens_in, tokens_out = attempt.usage()
        costs = [s.cost for s in attempt.steps if s.cost is not None]
        concluded = RootCauseConcluded(
            attempt=attempt.number,
            model=self.model_name,
            report=finish(report, attempt, partial=reason is not None),
            partial_reason=reason,
            model_requests=requests,
            tool_calls=len(attempt.requested),
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost=sum(costs) if costs else None,
        )
        event = self._event(inv, concluded, f"{attempt.number}|concluded")
        ack = await self.publisher.publish(event)
        apply(inv, event, ack.seq)

    # -- timers -----------------------------------------------------------------------------

    async def _tool_deadline(self, event: Event, asked: ToolRequested) -> None:
        deadline = event.occurred_at + timedelta(seconds=asked.timeout_seconds)
        left = (deadline - self.clock()).total_seconds()
        if left > 0:
            raise RedeliverLater(left)
        inv = fold(event.incident_id, await incident_events(self.js, event.incident_id))
        attempt = inv.current
        if attempt is None or attempt.concluded is not None:
            return
        if asked.tool_call_id in attempt.outcomes or attempt.number != asked.attempt:
            return
        failed = ToolFailed(
            tool_call_id=asked.tool_call_id,
            tool_name=asked.tool_name,
            error=f"no answer within {asked.timeout_seconds:g}s",
            timed_out=True,
            duration_ms=asked.timeout_seconds * 1000,
            attempt=asked.attempt,
        )
        key = f"{asked.attempt}|timed-out|{asked.tool_call_id}"
        await self.publisher.publish(self._event(inv, failed, key, caused_by=event))

    def _wall_time_timer(self, inv: Investigation, number: int) -> None:
        attempt = inv.current
        if attempt is None or attempt.number != number or attempt.concluded is not None:
            return
        ends = attempt.started_at + timedelta(seconds=self.limits.seconds)
        raise RedeliverLater(max((ends - self.clock()).total_seconds(), 0.0) + 0.05)

    def _event(
        self, inv: Investigation, data: Payload, key: str, *, caused_by: Event | None = None
    ) -> Event:
        """An event whose id is what it is about: a second writer's copy is dropped."""
        event_id = uuid.uuid5(NAMESPACE, f"{inv.incident_id}|{key}")
        return new_event(
            data, incident_id=inv.incident_id, source=SOURCE, event_id=event_id, caused_by=caused_by
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


async def run_investigator(
    investigator: Investigator,
    stop: asyncio.Event,
    *,
    concurrency: int = 8,
    ready: asyncio.Event | None = None,
) -> None:
    spec = investigator_spec(concurrency, investigator.limits)
    await consume(investigator.js, spec, investigator.handle, stop=stop, ready=ready)
