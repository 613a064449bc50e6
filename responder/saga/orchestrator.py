"""The saga orchestrator: a durable consumer of remediation plans and their approvals.

On each `RemediationProposed`, `RemediationApproved` or `RemediationRejected` it reads the
incident's events, folds each saga (`progress.fold`) and does what comes next
(`progress.next_move`) until the saga ends or has to wait: start it (the plan checked again
against the catalog, the policy and its rate limit), run each step through its executor,
verify recovery by measuring the incident's signal, compensate the completed steps in reverse
when a step or the verification fails, escalate a compensation that keeps failing. On a
`RootCauseConcluded` it proposes what the catalog recommends for the report's top hypothesis.

Nothing lives in memory between events: a crash at any point is resumed from the events by
the next delivery. A step recorded as started with no outcome is never run blindly again:
the executor is asked what became of its idempotency key (`http`), or the action says whether
a re-run is safe (`command`). Every event written has an id derived from what it is about, so
a second orchestrator that races this one writes nothing twice; before a step runs, its
`SagaStepStarted` must be new to the stream, so only one of them runs it.

The approval's expiry is a JetStream timer (the proposal is delivered again when it is due);
the pause is read before each step (`pause.py`), and on resume every open saga is taken up
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from eventlog.consumer import ConsumerSpec, Received, RedeliverLater, consume
from eventlog.envelope import Event, new_event, subject_for
from eventlog.history import incident_events, read_events
from eventlog.payloads import (
    AnomalyDetected,
    AnomalyResolved,
    AnomalyWithdrawn,
    CompensationEscalated,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    IncidentResolved,
    Payload,
    RemediationAction,
    RemediationProposed,
    RemediationRejected,
    RootCauseConcluded,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    VerificationFailed,
    VerificationMeasured,
    VerificationPassed,
)
from eventlog.publisher import EventPublisher
from responder.analyst.evidence import rule_expr
from responder.attempts import NoSuchIncident
from responder.saga.catalog import (
    Action,
    Catalog,
    Compensation,
    NoopExecutor,
    TemplateError,
    Verification,
    render_all,
)
from responder.saga.catalog import render as render_template
from responder.saga.executors import NoopRunner, StepOutcome, idempotency_key, runner_for
from responder.saga.failpoints import failpoint
from responder.saga.lease import Leases, saga_key, service_key
from responder.saga.pause import on_resume, read_pause
from responder.saga.plan import PlanRefused, check_plan
from responder.saga.policy import Policy
from responder.saga.progress import (
    Compensate,
    Done,
    Escalate,
    Expire,
    Finish,
    ResumeCompensation,
    ResumeStep,
    RunStep,
    Saga,
    Start,
    Verify,
    Wait,
    fold,
    next_move,
)
from responder.saga.proposals import propose, saga_ids, service_of_events

log = logging.getLogger(__name__)
SOURCE = "saga"
DURABLE = "saga"
NAMESPACE = uuid.UUID("4e0c2a91-7f3b-4d8e-b615-2c9a8d0f5e34")
BUSY = Wait("another orchestrator holds it")
MAX_MOVES = 256  # moves one delivery may make; a saga has a few per step
MAX_TAKES = 8  # times one delivery takes a saga's lease again for what came meanwhile
TRIGGERS = (
    "RemediationProposed",
    "RemediationApproved",
    "RemediationRejected",
    "RootCauseConcluded",
)
ENDINGS = ("RemediationRejected", "SagaCompleted", "SagaCompensated")


def orchestrator_spec(concurrency: int = 4, lease_term: float = 6.0) -> ConsumerSpec:
    """Every plan ever proposed is looked at (`deliver="all"`): one never started while fresh
    expires (`progress.Expire`) rather than acting on an old diagnosis. A dead orchestrator's
    delivery comes back once its lease's term is over (`ack_wait`), for another to go on."""
    return ConsumerSpec(
        durable=DURABLE,
        filter_subject=tuple(subject_for("*", t) for t in TRIGGERS),
        concurrency=concurrency,
        deliver="all",
        # A saga runs to its end (steps, settle, verification) in one delivery, kept ours by
        # heartbeats; every executor and measurement is bounded, and so is this.
        handler_timeout=6 * 3600,
        ack_wait=lease_term * 1.5,
        max_deliver=10,
    )


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Timing:
    """Waits between tries: a failed compensation is tried again after `backoff` seconds,
    doubled each time; an uncertain outcome is asked again `outcome_tries` times."""

    backoff: float = 2.0
    outcome_tries: int = 3


@dataclass
class _Run:
    """One saga being moved: its incident's events as known so far."""

    incident_id: str
    saga_id: str
    events: list[Event]
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # the lease went to another

    @property
    def saga(self) -> Saga:
        return fold(self.events, self.saga_id)


@dataclass
class Orchestrator:
    js: JetStreamContext
    catalog: Catalog
    policy: Policy
    prometheus_url: str | None = None
    control: KeyValue | None = None  # the pause switch's bucket; None: only the policy's
    leases: Leases | None = None  # None: the only orchestrator (no lease needed)
    clock: Callable[[], datetime] = wall_clock
    timing: Timing = field(default_factory=Timing)

    def __post_init__(self) -> None:
        self.publisher = EventPublisher(self.js)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # incident -> lock, its users
        self._service_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- entry points -----------------------------------------------------------------------

    async def handle(self, received: Received) -> None:
        data = received.event.data
        if isinstance(data, RootCauseConcluded):
            await self.recommend(received.event, data)
            return
        waits = await self.advance(received.event.incident_id)
        if BUSY in waits.values():  # its holder may be dead: look again once its term is over
            term = self.leases.term if self.leases else 1.0
            raise RedeliverLater(min(term * 2 ** (received.deliveries - 1), 600.0))
        wait = waits.get(data.saga_id) if isinstance(data, RemediationProposed) else None
        if wait is not None and wait.until is not None:  # the approval's expiry: a timer
            raise RedeliverLater(max((wait.until - self.clock()).total_seconds(), 0.0) + 0.05)

    async def advance(self, incident_id: str) -> dict[str, Wait]:
        """Take each saga of the incident as far as it goes now; returns what the ones that
        wait are waiting for (BUSY: another orchestrator holds it)."""
        lock, users = self._locks.get(incident_id, (asyncio.Lock(), 0))
        self._locks[incident_id] = (lock, users + 1)
        try:
            async with lock:  # one move at a time per incident: the sweep and the consumer
                events = [s.event for s in await incident_events(self.js, incident_id)]
                waits: dict[str, Wait] = {}
                failed: Exception | None = None
                for saga_id in saga_ids(events):
                    saga = fold(events, saga_id)
                    run = _Run(incident_id, saga_id, events)
                    if saga.rejected is not None or (saga.ended and not self._owed(run, saga)):
                        continue  # over: no lease needed to know it
                    try:
                        wait = await self._advance_saga(incident_id, saga_id)
                    except Exception as exc:  # the others still go on; then a retry
                        log.exception("saga %s: could not move it", saga_id)
                        failed = failed or exc
                        continue
                    if wait is not None:
                        waits[saga_id] = wait
                if failed is not None:
                    raise failed
                return waits
        finally:
            lock, users = self._locks[incident_id]
            if users == 1:
                del self._locks[incident_id]
            else:
                self._locks[incident_id] = (lock, users - 1)

    async def _advance_saga(self, incident_id: str, saga_id: str) -> Wait | None:
        wait: Wait | None = None
        for _ in range(MAX_TAKES):
            async with self._holding(saga_id) as lost:
                if lost is None:
                    return BUSY
                events = [s.event for s in await incident_events(self.js, incident_id)]
                wait = await self._move(_Run(incident_id, saga_id, events, lost))
            if self.leases is None:
                return wait
            # Given back. Did something come that the holder did not see (an approval, the
            # pause lifting) while another orchestrator, finding it held, left it to us?
            events = [s.event for s in await incident_events(self.js, incident_id)]
            saga = fold(events, saga_id)
            paused = await self._paused()
            move = next_move(
                saga, self.clock(), approval_expiry=self.policy.approval_expiry,
                paused=paused, irreversible=self._irreversible(saga),
            )  # fmt: skip
            held_open = paused and isinstance(move, ResumeStep | ResumeCompensation)
            if isinstance(move, Done | Wait) or held_open:  # (held open: it waits for resume)
                return wait
        return wait  # moving still: the next event or sweep goes on

    def _holding(
        self, saga_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Event | None]:
        if self.leases is None:
            return contextlib.nullcontext(asyncio.Event())  # never lost
        return self.leases.holding(saga_key(saga_id))

    async def sweep(self) -> int:
        """Take up every saga not ended (at start, and when the pause lifts); how many
        incidents had one."""
        kinds = ("RemediationProposed", "SagaStarted", *ENDINGS)
        stored = await read_events(self.js, [subject_for("*", t) for t in kinds])
        by_saga: defaultdict[str, list[Event]] = defaultdict(list)
        for s in stored:
            by_saga[s.event.data.saga_id].append(s.event)  # type: ignore[attr-defined]
        incidents = list(
            dict.fromkeys(  # open as `fold` reads its end; each saga folded once
                events[0].incident_id
                for saga_id, events in by_saga.items()
                if _open(fold(events, saga_id))
            )
        )
        for incident_id in incidents:
            try:
                await self.advance(incident_id)
            except Exception:
                log.exception("incident %s: could not take up its sagas", incident_id)
        return len(incidents)

    async def recommend(self, event: Event, concluded: RootCauseConcluded) -> None:
        """Propose the catalog's remedy for the report's top hypothesis: an action that lists
        its category in `remedies`, aimed at the hypothesis's service. Nothing when the report
        is partial or unsure, or a saga of the incident is still open."""
        report = concluded.report
        top = report.hypotheses[0]
        if report.partial or top.service is None:
            return
        if self.clock() - event.occurred_at > self.policy.approval_expiry:
            return  # an old report (a new orchestrator reading history): acting on it is not safe
        if top.confidence < self.policy.min_confidence_to_propose:
            return
        action = next((a for a in self.catalog.actions if top.category in a.remedies), None)
        if action is None:
            return
        events = [s.event for s in await incident_events(self.js, event.incident_id)]
        if _resolved(events):
            return
        for saga_id in saga_ids(events):
            saga = fold(events, saga_id)
            if saga.ended is None and saga.rejected is None:
                return  # one remediation at a time
        key = f"{event.incident_id}|report|{concluded.attempt}"
        saga_id = f"saga-{uuid.uuid5(NAMESPACE, key).hex[:12]}"
        if saga_id in saga_ids(events) or any(
            isinstance(e.data, RemediationRejected) and e.data.saga_id == saga_id for e in events
        ):
            return
        rationale = (
            f"recommended by attempt {concluded.attempt}'s report: {top.category} of "
            f"{top.service} ({top.confidence:.2f}): {report.summary}"
        )
        step = RemediationAction(action=action.name, params={action.scope.target: top.service})
        try:
            await propose(
                self.js, event.incident_id, [step], catalog=self.catalog, policy=self.policy,
                by="responder", rationale=rationale, saga_id=saga_id,
            )  # fmt: skip
        except NoSuchIncident:
            log.warning("incident %s: a report but no anomaly: nothing proposed", event.incident_id)

    # -- the moves --------------------------------------------------------------------------

    async def _move(self, run: _Run) -> Wait | None:
        try:
            return await self._moves(run)
        except _Busy:
            return BUSY
        except _LostRace as lost:
            log.info("saga %s: %s was recorded by another orchestrator: left to it", run.saga_id,
                     lost)  # fmt: skip
            return None

    async def _moves(self, run: _Run) -> Wait | None:
        for _ in range(MAX_MOVES):
            if run.lost.is_set():
                log.error(
                    "saga %s: its lease went to another orchestrator: left to it", run.saga_id
                )
                return None
            saga = run.saga
            paused = await self._paused()
            irreversible = self._irreversible(saga)
            move = next_move(
                saga, self.clock(), approval_expiry=self.policy.approval_expiry,
                paused=paused, irreversible=irreversible,
            )  # fmt: skip
            match move:
                case Done():
                    await self._resolve(run, saga)
                    return None
                case Wait():
                    return move
                case Expire(why=why):
                    rejected = RemediationRejected(saga_id=run.saga_id, by="policy",
                                                   reason=f"expired: {why}")  # fmt: skip
                    await self._append(run, rejected, "expired")
                case Start(dry_run=dry_run):
                    await self._start(run, saga, dry_run)
                case RunStep(step=i, attempt=attempt):
                    await self._run_step(run, saga, i, attempt)
                case ResumeStep(step=i, attempt=attempt):
                    if not await self._resume_step(run, saga, i, attempt, paused=paused):
                        return Wait("paused")  # it never ran: it waits, started, for the end
                case Verify():
                    await self._verify(run, saga)
                case Compensate(step=i, attempt=attempt):
                    await self._compensate(run, saga, i, attempt, resume=False)
                case ResumeCompensation(step=i, attempt=attempt):
                    if not await self._compensate(run, saga, i, attempt, resume=True,
                                                  paused=paused):  # fmt: skip
                        return Wait("paused")
                case Escalate(step=i):
                    await self._escalate(run, saga, i)
                case Finish(compensated=compensated, reason=reason):
                    await self._finish(run, saga, compensated, reason)
        log.warning("saga %s: still moving after %d moves", run.saga_id, MAX_MOVES)
        return None

    async def _start(self, run: _Run, saga: Saga, dry_run: bool) -> None:
        proposed = saga.proposed
        assert proposed is not None
        service = _service(run.events)
        try:  # again: the catalog or policy may have changed, or the plan never passed them
            plan = check_plan(self.catalog, proposed.steps, incident_service=service)
        except PlanRefused as exc:
            await self._reject(run, str(exc))
            return
        mode = self.policy.mode_for_plan(plan.targets, plan.risks, proposed.mode)
        if mode == "approval" and saga.approved is None:
            await self._reject(run, "the policy asks for approval of this plan: propose it again")
            return
        dry_run = dry_run or mode == "dry_run"
        services = sorted(set(plan.targets))
        started = SagaStarted(saga_id=run.saga_id, steps=plan.steps, dry_run=dry_run,
                              services=services)  # fmt: skip
        if dry_run:
            await self._append(run, started, "started")
        else:  # the rate limit's count and the start as one, per service, across orchestrators
            async with self._services_held(services) as held:
                if not held:
                    raise _Busy
                over = await self._over_rate(services)
                if over:
                    await self._reject(run, over)
                    return
                await self._append(run, started, "started")
        failpoint("saga.started")

    @contextlib.asynccontextmanager
    async def _services_held(self, services: list[str]) -> AsyncIterator[bool]:
        """Each service's lock in this process and lease among orchestrators, in name order
        (so two that want the same ones cannot each hold half)."""
        async with contextlib.AsyncExitStack() as stack:
            for service in services:
                await stack.enter_async_context(self._service_locks[service])
                if self.leases is not None:
                    lost = await stack.enter_async_context(
                        self.leases.holding(service_key(service))
                    )
                    if lost is None:
                        yield False
                        return
            yield True

    async def _over_rate(self, services: list[str]) -> str | None:
        now = self.clock()
        recent = await read_events(
            self.js, [subject_for("*", "SagaStarted")], since=now - timedelta(hours=1)
        )
        for service in services:
            times = [
                s.event.occurred_at
                for s in recent
                if isinstance(s.event.data, SagaStarted)
                and not s.event.data.dry_run
                and service in s.event.data.services
            ]
            if self.policy.over_rate(times, now):
                limit = self.policy.max_per_service_per_hour
                n = len(times)
                return f"rate limit: {n} remediations of {service} in the last hour (max {limit})"
        return None

    async def _run_step(self, run: _Run, saga: Saga, i: int, attempt: int) -> None:
        assert saga.started is not None
        step = saga.started.steps[i]
        key = idempotency_key(run.saga_id, i, attempt)
        try:  # each step as the catalog and policy allow it now, whoever wrote SagaStarted
            checked = check_plan(self.catalog, [step], incident_service=_service(run.events))
            mode = self.policy.mode_for_plan(checked.targets, checked.risks)
            if mode == "approval" and saga.approved is None and not saga.started.dry_run:
                raise PlanRefused(f"step 0 ({step.action!r}) needs an approval it never had")
        except PlanRefused as exc:
            why = str(exc).removeprefix("step 0 ")
            refused = SagaStepFailed(saga_id=run.saga_id, step=i, action=step.action,
                                     error=f"refused: {why}")  # fmt: skip
            await self._append(run, refused, f"step|{i}|{attempt}|outcome")
            return
        started = SagaStepStarted(saga_id=run.saga_id, step=i, action=step.action,
                                  params=step.params, idempotency_key=key)  # fmt: skip
        await self._append(run, started, f"step|{i}|{attempt}|started")
        failpoint("step.started")
        action = self.catalog.get(step.action)
        if action is None:
            outcome = StepOutcome(False, error=f"{step.action!r} is no longer in the catalog")
        else:
            outcome = await self._execute(action, step.params, key, saga.started.dry_run)
        failpoint("step.executed")
        await self._record_step(run, i, attempt, step.action, outcome)

    async def _resume_step(
        self, run: _Run, saga: Saga, i: int, attempt: int, *, paused: bool
    ) -> bool:
        """The step was started and its outcome never recorded: what became of its key?
        False when it never ran and, paused, is not run now."""
        assert saga.started is not None
        step = saga.started.steps[i]
        key = idempotency_key(run.saga_id, i, attempt)
        action = self.catalog.get(step.action)
        outcome: StepOutcome | None
        if action is None:
            outcome = StepOutcome(False, error=f"{step.action!r} is no longer in the catalog")
        else:
            dry_run = saga.started.dry_run
            outcome = await self._resume(action, step.params, key, dry_run, may_run=not paused)
        if outcome is None:
            return False
        failpoint("step.executed")
        await self._record_step(run, i, attempt, step.action, outcome)
        return True

    async def _record_step(
        self, run: _Run, i: int, attempt: int, action: str, outcome: StepOutcome
    ) -> None:
        data: Payload
        if outcome.ok:
            data = SagaStepSucceeded(saga_id=run.saga_id, step=i, action=action,
                                     output=outcome.output)  # fmt: skip
        else:
            data = SagaStepFailed(saga_id=run.saga_id, step=i, action=action,
                                  error=outcome.error or "failed",
                                  uncertain=not outcome.certain)  # fmt: skip
        await self._append(run, data, f"step|{i}|{attempt}|outcome")
        failpoint("step.recorded")

    async def _execute(
        self, action: Action, params: dict[str, Any], key: str, dry_run: bool
    ) -> StepOutcome:
        if dry_run:
            noop = action.model_copy(update={"executor": NoopExecutor(kind="noop")})
            return await NoopRunner().run(noop, params, key)
        outcome = await _guarded(runner_for(action).run(action, params, key))
        if outcome.certain:
            return outcome
        # Sent, maybe carried out (a timeout, a cut connection): ask before anything else.
        known = await self._resume(action, params, key, dry_run, first=outcome)
        assert known is not None  # it may run: it is this step's own try
        return known

    async def _resume(
        self,
        action: Action,
        params: dict[str, Any],
        key: str,
        dry_run: bool,
        first: StepOutcome | None = None,
        *,
        may_run: bool = True,
    ) -> StepOutcome | None:
        """What became of `key`, running it (under the same key) if it never ran, or if the
        action is safe to run again and its outcome cannot be told. None: it would have to
        run, and `may_run` is false (paused): nothing is done."""
        if dry_run:
            return await self._execute(action, params, key, dry_run) if may_run else None
        runner = runner_for(action)
        known = first
        for n in range(self.timing.outcome_tries):
            known = await _guarded(runner.outcome(action, params, key))
            if known is None:  # it never ran: run it now, under the same key
                return await _guarded(runner.run(action, params, key)) if may_run else None
            if known.certain:
                return known
            if action.executor.kind == "command":
                break  # a command cannot be asked: no point asking again
            await asyncio.sleep(self.timing.backoff * 2**n)
        if getattr(action.executor, "rerun_safe", False):
            return await _guarded(runner.run(action, params, key)) if may_run else None
        why = known.error if known is not None and known.error else "unknown"
        return StepOutcome(
            False, error=f"outcome unknown ({why}); not run again, as that may not be safe",
            certain=False,
        )  # fmt: skip

    # -- verification -----------------------------------------------------------------------

    async def _verify(self, run: _Run, saga: Saga) -> None:
        assert saga.started is not None and saga.last_step_at is not None
        actions = [self.catalog.get(s.action) for s in saga.started.steps]
        if all(a is not None and a.executor.kind == "noop" for a in actions):
            passed = VerificationPassed(saga_id=run.saga_id, check="nothing to verify: no step "
                                        "changed anything (noop)")  # fmt: skip
            await self._append(run, passed, "verified")
            return
        spec, query = self._verification(saga, run.events)
        check = f"{query} {spec.success_condition}" if query else "the incident's alerts resolve"
        start = saga.last_step_at + timedelta(seconds=spec.settle_seconds)
        measured = list(saga.measurements)
        failures = sum(1 for m, _ in measured if not m.ok)
        observed = measured[-1][0].observed if measured else None
        for index in range(len(measured), spec.count):
            due = start + timedelta(seconds=spec.interval_seconds * index)
            if measured:
                due = max(due, measured[-1][1] + timedelta(seconds=spec.interval_seconds))
            await asyncio.sleep(max((due - self.clock()).total_seconds(), 0.0))
            run.events = [s.event for s in await incident_events(self.js, run.incident_id)]
            if _recovered(run.events, saga.started_at):
                passed = VerificationPassed(saga_id=run.saga_id, check="the alert resolved",
                                            observed=observed)  # fmt: skip
                await self._append(run, passed, "verified")
                return
            if query is None:
                continue  # only the alert's resolution can tell
            own = _labels(run.events) if spec.query is None else None  # the incident's signal
            observed, ok, error = await self._measure(query, spec, own)
            measurement = VerificationMeasured(saga_id=run.saga_id, index=index, query=query,
                                               observed=observed, ok=ok, error=error)  # fmt: skip
            await self._append(run, measurement, f"measured|{index}")
            measured.append((measurement, self.clock()))
            failures += 0 if ok else 1
            if failures > spec.failure_limit:
                reason = f"{failures} of {index + 1} measurements failed {spec.success_condition}"
                reason += f" ({error})" if error else ""
                failed = VerificationFailed(saga_id=run.saga_id, check=check,
                                            observed=observed, reason=reason)  # fmt: skip
                await self._append(run, failed, "verified")
                return
        if query is None:
            failed = VerificationFailed(saga_id=run.saga_id, check=check, reason="the alert "
                                        f"did not resolve within {spec.count} checks")  # fmt: skip
            await self._append(run, failed, "verified")
            return
        passed = VerificationPassed(saga_id=run.saga_id, check=check, observed=observed)
        await self._append(run, passed, "verified")

    def _verification(self, saga: Saga, events: list[Event]) -> tuple[Verification, str | None]:
        """The last step's action's verification (or the default) and its query. The action's
        query is rendered with the step's params; without one, the incident's signal is
        measured (`incident_signal`). None: no query can be run (no Prometheus, or nothing
        to ask), so only the alert resolving tells."""
        assert saga.started is not None
        spec, query = Verification(), None
        for step in saga.started.steps:
            action = self.catalog.get(step.action)
            if action is not None and action.verify is not None:
                spec, query = action.verify, None
                if spec.query:
                    try:
                        query = str(render_template(spec.query, step.params))
                    except TemplateError as exc:  # a measurement that fails, with the reason
                        query = f"invalid: {exc}"
        if query is None:
            signal = incident_signal(events)
            if signal is not None:
                query, condition = signal
                spec = spec.model_copy(update={"success_condition": condition})
        return spec, (query if self.prometheus_url else None)

    async def _measure(
        self, query: str, spec: Verification, series: dict[str, str] | None = None
    ) -> tuple[float | None, bool, str | None]:
        """One instant query: (the first value, whether it meets the condition, the error).
        With `series` (an alert's labels), only the series of that alert count: the rule's
        expr also returns other services' breaches."""
        assert self.prometheus_url
        url = f"{self.prometheus_url.rstrip('/')}/api/v1/query"
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                answer = await client.get(url, params={"query": query})
            answer.raise_for_status()
            data = answer.json()["data"]
            values = _values(data, series)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return None, False, f"the query failed: {type(exc).__name__}: {exc}"[:300]
        return (values[0] if values else None), spec.judge(values), None

    # -- compensation and the end -----------------------------------------------------------

    async def _compensate(
        self, run: _Run, saga: Saga, i: int, attempt: int, *, resume: bool, paused: bool = False
    ) -> bool:
        """Undo step `i` (or find out what became of the try a crash left open); False when
        that try never ran and, paused, is not run now."""
        assert saga.started is not None
        step = saga.started.steps[i]
        done = saga.steps[i].succeeded
        assert done is not None
        key = idempotency_key(run.saga_id, i, attempt, undo=True)
        if not resume and attempt > 1:  # back off before trying again
            await asyncio.sleep(self.timing.backoff * 2 ** (attempt - 2))
        undo, error = self._undo(step, done.output, _service(run.events))
        if not resume:
            started = CompensationStarted(
                saga_id=run.saga_id, step=i, action=undo[0].name if undo else step.action,
                params=undo[1] if undo else {}, idempotency_key=key,
            )  # fmt: skip
            await self._append(run, started, f"undo|{i}|{attempt}|started")
            failpoint("compensation.started")
        outcome: StepOutcome | None
        if undo is None:
            outcome = StepOutcome(False, error=error)
        elif resume:
            outcome = await self._resume(undo[0], undo[1], key, saga.started.dry_run,
                                         may_run=not paused)  # fmt: skip
        else:
            outcome = await self._execute(undo[0], undo[1], key, saga.started.dry_run)
        if outcome is None:
            return False
        failpoint("compensation.executed")
        data: Payload
        action = undo[0].name if undo else step.action
        if outcome.ok:
            data = CompensationSucceeded(saga_id=run.saga_id, step=i, action=action)
        else:
            data = CompensationFailed(saga_id=run.saga_id, step=i, action=action,
                                      error=outcome.error or "failed",
                                      uncertain=not outcome.certain)  # fmt: skip
        await self._append(run, data, f"undo|{i}|{attempt}|outcome")
        failpoint("compensation.recorded")
        return True

    def _undo(
        self, step: RemediationAction, output: dict[str, Any], incident_service: str | None
    ) -> tuple[tuple[Action, dict[str, Any]] | None, str]:
        """The compensating action and its params, checked like any step; or why not."""
        action = self.catalog.get(step.action)
        if action is None or not isinstance(action.compensation, Compensation):
            return None, f"{step.action!r} has no compensation in the catalog now"
        undo = self.catalog.get(action.compensation.action)
        assert undo is not None  # the catalog checks its compensations exist
        try:
            params = render_all(action.compensation.params,
                                {"params": step.params, "output": output})  # fmt: skip
        except TemplateError as exc:
            return None, f"its params cannot be made: {exc}"
        plan = RemediationAction(action=undo.name, params=params)
        try:
            check_plan(self.catalog, [plan], incident_service=incident_service)
        except PlanRefused as exc:
            return None, str(exc)
        return (undo, params), ""

    async def _escalate(self, run: _Run, saga: Saga, i: int) -> None:
        """A person must act: step `i`'s compensation failed every try (or a try may have
        acted), or step `i` failed in a way that may have taken effect."""
        comp = saga.compensations.get(i)
        tried = [e.data.action for e in run.events if isinstance(e.data, CompensationStarted)
                 and e.data.saga_id == run.saga_id and e.data.step == i]  # fmt: skip
        if comp is not None and tried:  # `action`: the compensation, as its other events
            escalated = CompensationEscalated(
                saga_id=run.saga_id, step=i, action=tried[-1], attempts=comp.failures,
                error=comp.last_error,
            )  # fmt: skip
        else:
            failed = saga.steps[i].failed
            assert failed is not None
            escalated = CompensationEscalated(
                saga_id=run.saga_id, step=i, action=failed.action, attempts=1,
                error=f"the step may have taken effect: {failed.error}",
            )  # fmt: skip
        await self._append(run, escalated, f"undo|{i}|escalated")

    async def _finish(self, run: _Run, saga: Saga, compensated: bool, reason: str) -> None:
        assert saga.started is not None
        if compensated:
            await self._append(run, SagaCompensated(saga_id=run.saga_id, reason=reason), "ended")
            return
        await self._append(run, SagaCompleted(saga_id=run.saga_id), "ended")
        await self._resolve(run, run.saga)

    def _owed(self, run: _Run, saga: Saga) -> bool:
        """A saga completed for real resolves its incident: owed until that is in the stream
        (the orchestrator may have died between the two)."""
        if not isinstance(saga.ended, SagaCompleted) or saga.started is None:
            return False
        resolved = self._id(run, "resolved")
        return not saga.started.dry_run and not any(e.id == resolved for e in run.events)

    async def _resolve(self, run: _Run, saga: Saga) -> None:
        if not self._owed(run, saga):
            return
        check = saga.verification.check if saga.verification else ""
        actions = ", ".join(s.action for s in saga.started.steps)
        resolved = IncidentResolved(how="remediation", by="vigil",
                                    summary=f"{actions}; recovery verified: {check}")  # fmt: skip
        await self._append(run, resolved, "resolved")

    async def _reject(self, run: _Run, reason: str) -> None:
        rejected = RemediationRejected(saga_id=run.saga_id, by="policy", reason=reason)
        await self._append(run, rejected, "refused")

    # -- helpers ----------------------------------------------------------------------------

    async def _paused(self) -> bool:
        if self.policy.paused:
            return True
        if self.control is None:
            return False
        switch = await read_pause(self.control)
        return switch is not None and switch.paused

    def _irreversible(self, saga: Saga) -> frozenset[int]:
        if saga.started is None:
            return frozenset()
        return frozenset(i for i, s in enumerate(saga.started.steps) if s.compensation is None)

    @staticmethod
    def _id(run: _Run, key: str) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, f"{run.incident_id}|{run.saga_id}|{key}")

    async def _append(self, run: _Run, data: Payload, key: str) -> None:
        """Append the saga's event (its id from `key`). Already there: another orchestrator
        moved the saga meanwhile (possible without leases), so this one stops (_LostRace)."""
        event = new_event(
            data, incident_id=run.incident_id, source=SOURCE, event_id=self._id(run, key)
        )
        ack = await self.publisher.publish(event)
        if ack.duplicate:
            raise _LostRace(key)
        run.events.append(event)


class _Busy(Exception):
    """A lease this move needs is another orchestrator's."""


class _LostRace(Exception):
    """An event this orchestrator meant to append was there already."""


def _service(events: list[Event]) -> str | None:
    return service_of_events(events)


async def _guarded(call: Awaitable[StepOutcome | None]) -> StepOutcome | None:
    """What the executor says, or its exception as a failure: the executors catch the errors
    of their I/O, so what escapes them happened before anything was sent (a URL a value makes
    invalid, say): retrying the delivery would only meet it again."""
    try:
        return await call
    except Exception as exc:
        log.exception("an executor failed")
        return StepOutcome(False, error=f"{type(exc).__name__}: {exc}"[:500])


def _open(saga: Saga) -> bool:
    return saga.proposed is not None and saga.ended is None and saga.rejected is None


def _resolved(events: list[Event]) -> bool:
    """Resolved, and nothing fired since."""
    state = False
    for e in events:
        if isinstance(e.data, IncidentResolved):
            state = True
        elif isinstance(e.data, AnomalyDetected):
            state = False
    return state


def _recovered(events: list[Event], since: datetime | None) -> bool:
    """Every anomaly of the incident ended, at least one of them after `since`."""
    firing: set[str] = set()
    ended_after = False
    for e in events:
        if isinstance(e.data, AnomalyDetected):
            firing.add(e.data.fingerprint)
        elif isinstance(e.data, AnomalyResolved | AnomalyWithdrawn):
            firing.discard(e.data.fingerprint)
            if isinstance(e.data, AnomalyResolved) and (since is None or e.occurred_at >= since):
                ended_after = True
    return ended_after and not firing


def _values(data: dict[str, Any], series: dict[str, str] | None = None) -> list[float]:
    """The values of an instant query's result (a vector's samples, or a scalar); with
    `series`, only of the samples whose labels all agree with it."""
    if data["resultType"] == "vector":
        return [
            float(s["value"][1])
            for s in data["result"]
            if series is None
            or all(series.get(k) == v for k, v in s["metric"].items() if k != "__name__")
        ]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    raise ValueError(f"a {data['resultType']} result, not a vector")


def incident_signal(events: list[Event]) -> tuple[str, str] | None:
    """The query and success condition that tell the incident's first anomaly is over: an
    Alertmanager alert's expr (from its generator URL), healthy when it returns nothing; a
    detector's fixed-line rule, healthy on the right side of its line. None for the others
    (a z-score has no fixed line): only their resolution can tell."""
    first = next((e.data for e in events if isinstance(e.data, AnomalyDetected)), None)
    if first is None:
        return None
    notes = first.annotations
    if first.origin == "detector":
        if "threshold" not in notes or "query" not in notes:
            return None
        side = "<=" if notes.get("direction") == "above" else ">="
        return notes["query"], f"result {side} {float(notes['threshold'])!r}"
    expr = rule_expr(first.generator_url)
    return (expr, "empty") if expr else None


def _labels(events: list[Event]) -> dict[str, str] | None:
    first = next((e.data for e in events if isinstance(e.data, AnomalyDetected)), None)
    return dict(first.labels) if first is not None else None


async def run_orchestrator(
    orchestrator: Orchestrator,
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    ready: asyncio.Event | None = None,
) -> None:
    """Consume until `stop`; meanwhile take up open sagas at start and when the pause lifts."""
    background: list[asyncio.Task[Any]] = []
    if orchestrator.control is not None:
        background.append(asyncio.create_task(on_resume(orchestrator.control, orchestrator.sweep)))
    consuming = asyncio.Event()

    async def once_consuming() -> None:
        await consuming.wait()
        if ready is not None:
            ready.set()
        await orchestrator.sweep()  # what was left open while no orchestrator ran

    background.append(asyncio.create_task(once_consuming()))
    term = orchestrator.leases.term if orchestrator.leases else 6.0
    spec = orchestrator_spec(concurrency, term)
    try:
        await consume(orchestrator.js, spec, orchestrator.handle, stop=stop, ready=consuming)
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
