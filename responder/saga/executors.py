"""Executors: how a catalog action's step is carried out, and asked about after a crash.

Every step carries an idempotency key (`idempotency_key`: saga id, step, attempt). An
executor `run`s a step and says what came of it; `outcome` asks what became of a key, for a
step whose result was never recorded (the orchestrator died between `SagaStepStarted` and
its outcome):

- `http`: a JSON request, the key in the `Idempotency-Key` header; success by status code; the
  answer's JSON object is the step's output. `outcome_url` (a GET, `{key}` in its template)
  replays the key's answer, status and body, as an idempotency-keyed API does (Stripe's):
  404 for a key it never saw, a success status for a key carried out, another 4xx for one it
  refused; anything else (a 5xx, no answer) leaves the outcome unknown.
- `command`: the program with its arguments, never through a shell, killed at its timeout;
  exit status 0 is success, the end of its output the step's output. It cannot be asked:
  the action's `rerun_safe` tells the orchestrator whether it may run again.
- `noop`: records what it would do (a dry run), and does nothing.

A new kind (Kubernetes scale or rollout undo, a feature flag) is a class with these two
methods (`Runner`), registered in RUNNERS under its `kind`; `NoopRunner` is the smallest.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from responder.saga.catalog import (
    Action,
    CommandExecutor,
    HttpExecutor,
    NoopExecutor,
    TemplateError,
    render,
    render_all,
)

KEY_HEADER = "Idempotency-Key"
OUTPUT_TAIL = 2000  # characters of a command's output kept as the step's output


def idempotency_key(saga_id: str, step: int, attempt: int, *, undo: bool = False) -> str:
    """`saga:step:attempt` (`saga:step:undo:attempt` for its compensation): one per try, the
    same after a crash (no `/`, so it stands in a URL path as one segment)."""
    return f"{saga_id}:{step}:undo:{attempt}" if undo else f"{saga_id}:{step}:{attempt}"


@dataclass(frozen=True)
class StepOutcome:
    """What came of a step. `certain` is False when it may or may not have taken effect (a
    timeout, a connection cut mid-request): ask `outcome`, or treat it per the action."""

    ok: bool
    output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    certain: bool = True


class Runner(Protocol):
    async def run(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome: ...

    async def outcome(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome | None:
        """What became of `key`: its outcome, None when it never ran, or an uncertain
        outcome when this executor cannot tell."""
        ...


def _url(template: str, params: dict[str, Any], key: str) -> str:
    return str(render(template, {**params, "key": key}, quote=_segment))


def _segment(text: str) -> str:
    """A value as one path segment: quoted, and never empty, `.` or `..` (which a client
    resolves away, reaching another endpoint)."""
    if text in ("", ".", ".."):
        raise TemplateError(f"{text!r} cannot stand as a segment of a URL's path")
    return quote(text, safe="")


class HttpRunner:
    async def run(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome:
        spec = action.executor
        assert isinstance(spec, HttpExecutor)
        url = _url(spec.url, params, key)
        body = render_all(spec.body, params) if spec.body is not None else None
        headers = {**render_all(spec.headers, params), KEY_HEADER: key}
        try:
            async with httpx.AsyncClient(timeout=spec.timeout_seconds) as client:
                answer = await client.request(spec.method, url, json=body, headers=headers)
        except httpx.ConnectError as exc:  # nothing was sent: certainly not done
            return StepOutcome(False, error=f"{url} unreachable: {exc}")
        except httpx.HTTPError as exc:  # sent, maybe carried out: not known
            return StepOutcome(False, error=f"{type(exc).__name__}: {exc}", certain=False)
        if answer.status_code not in spec.success_status:
            return StepOutcome(False, error=f"{answer.status_code}: {answer.text[:300]}")
        return StepOutcome(True, output=_json_object(answer))

    async def outcome(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome | None:
        spec = action.executor
        assert isinstance(spec, HttpExecutor)
        if spec.outcome_url is None:
            return StepOutcome(False, error="no outcome_url to ask", certain=False)
        url = _url(spec.outcome_url, params, key)
        try:
            async with httpx.AsyncClient(timeout=spec.timeout_seconds) as client:
                answer = await client.get(url, headers={KEY_HEADER: key})
        except httpx.HTTPError as exc:
            return StepOutcome(False, error=f"outcome unknown: {exc}", certain=False)
        status = answer.status_code
        if status == 404:
            return None
        if status in spec.success_status:
            return StepOutcome(True, output=_json_object(answer))
        if 400 <= status < 500:  # it was refused, and says so again
            return StepOutcome(False, error=f"{status}: {answer.text[:300]}")
        return StepOutcome(False, error=f"outcome unknown: {status}: {answer.text[:300]}",
                           certain=False)  # fmt: skip


def _json_object(answer: httpx.Response) -> dict[str, Any]:
    try:
        data = answer.json()
    except ValueError:
        return {"status": answer.status_code}
    return data if isinstance(data, dict) else {"status": answer.status_code, "body": data}


class CommandRunner:
    async def run(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome:
        spec = action.executor
        assert isinstance(spec, CommandExecutor)
        args = [str(render(a, {**params, "key": key})) for a in spec.args]
        try:
            proc = await asyncio.create_subprocess_exec(
                spec.program,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "VIGIL_IDEMPOTENCY_KEY": key},
            )
        except OSError as exc:  # not there, not executable: it never ran
            return StepOutcome(False, error=f"{spec.program} cannot run: {exc.strerror or exc}")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), spec.timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            error = f"killed after {spec.timeout_seconds:g}s"
            return StepOutcome(False, error=error, certain=False)
        text = out.decode(errors="replace")[-OUTPUT_TAIL:]
        if proc.returncode != 0:
            return StepOutcome(False, {"output": text}, f"exit status {proc.returncode}")
        return StepOutcome(True, {"output": text})

    async def outcome(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome | None:
        return StepOutcome(False, error="a command cannot be asked", certain=False)


class NoopRunner:
    async def run(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome:
        assert isinstance(action.executor, NoopExecutor)
        return StepOutcome(True, {"dry_run": True, "action": action.name, "params": params})

    async def outcome(self, action: Action, params: dict[str, Any], key: str) -> StepOutcome | None:
        return None  # nothing happened either way: running it again is harmless


RUNNERS: dict[str, Runner] = {
    "http": HttpRunner(),
    "command": CommandRunner(),
    "noop": NoopRunner(),
}


def runner_for(action: Action) -> Runner:
    return RUNNERS[action.executor.kind]
