"""Crash safety with real processes: `vigil responder` killed with SIGKILL while its tools are
out, and while a model turn runs. After a restart there is exactly one conclusion for the
attempt, and what was recorded (tool results, model answers) is reused, not done again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext

from responder.tools import ToolSettings, default_tools
from responder.worker import run_workers
from tests.responder.chat_server import ChatServer, completion, tool_calls, tool_messages
from tests.responder.running import anomaly, append, responder, watching
from tests.vigil.vigil_cli_support import VIGIL, vigil_env
from vigil.broker import EmbeddedNats

pytestmark = pytest.mark.slow


def two_tools(body: dict[str, Any]) -> dict[str, Any]:
    return tool_calls(("call_a", "recent_changes", {"hours": 1}),
                      ("call_b", "recent_changes", {"hours": 2}))  # fmt: skip


def answer(body: dict[str, Any]) -> dict[str, Any]:
    seen = sorted(tool_messages(body))
    report = {"summary": f"read {', '.join(seen)}", "hypotheses": [
        {"category": "unknown", "service": "checkout", "confidence": 0.3,
         "explanation": "nothing changed", "evidence": seen}]}  # fmt: skip
    return completion({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_final", "type": "function",
         "function": {"name": "final_result", "arguments": orjson.dumps(report).decode()}}]},
        "tool_calls")  # fmt: skip


@contextlib.asynccontextmanager
async def vigil_role(
    role: str, ready: bytes, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`vigil <role>` running until the block ends (SIGKILL then, if still running)."""
    proc = await asyncio.create_subprocess_exec(
        VIGIL, role, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(ready), line
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


def vigil_responder(
    nats: EmbeddedNats, chat: ChatServer, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    env = vigil_env(tmp_path, nats_url=nats.url, model="openai:m", model_base_url=chat.url,
                    model_api_key="sk-test")  # fmt: skip
    return vigil_role("responder", b"investigating with openai:m", env)


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


async def workers_durable(js: JetStreamContext) -> None:
    """The workers' durable exists (as once a pool ran) while no worker runs."""
    stop, ready = asyncio.Event(), asyncio.Event()
    stop.set()
    await run_workers(js, default_tools(), stop, nc=js._nc, settings=ToolSettings(), ready=ready)


async def test_a_responder_killed_while_its_tools_are_out_concludes_once_after_restart(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    chat = ChatServer([two_tools, answer])
    await workers_durable(js)
    async with chat.running(), watching(js) as watch:
        async with vigil_responder(nats_server, chat, tmp_path) as first:
            await append(js, anomaly())
            await watch.until(lambda: len(watch.of("inc-1", "ToolRequested")) == 2)
            await kill(first)
        async with responder(js, default_tools(), investigators=0, workers=1):
            await watch.until(lambda: len(watch.of("inc-1", "ToolCompleted")) == 2)
        async with vigil_responder(nats_server, chat, tmp_path):
            [concluded] = await watch.concluded("inc-1", timeout=60)
            await watch.until(lambda: len(chat.requests) == 2)
    assert concluded.data.report.summary == "read call_a, call_b"
    assert len(watch.of("inc-1", "RootCauseConcluded")) == 1
    assert len(watch.of("inc-1", "ToolRequested")) == 2  # recorded results reused, not re-run
    assert len(watch.of("inc-1", "ToolCompleted")) == 2
    assert [e.data.step for e in watch.of("inc-1", "AgentStep")] == [0, 1]
    assert len(chat.requests) == 2  # the first turn's answer was recorded: not asked again


async def test_a_responder_killed_while_a_model_turn_runs_concludes_once_after_restart(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    chat = ChatServer([two_tools, answer, answer], hang_on=frozenset({2}))
    async with (
        chat.running(),
        watching(js) as watch,
        responder(js, default_tools(), investigators=0),
    ):
        async with vigil_responder(nats_server, chat, tmp_path) as first:
            await append(js, anomaly())
            await chat.until_requests(2)  # the second turn is with the model
            await kill(first)
        async with vigil_responder(nats_server, chat, tmp_path):
            [concluded] = await watch.concluded("inc-1", timeout=60)
    assert concluded.data.report.summary == "read call_a, call_b"
    assert len(watch.of("inc-1", "RootCauseConcluded")) == 1
    assert len(watch.of("inc-1", "ToolRequested")) == 2
    assert len(watch.of("inc-1", "ToolCompleted")) == 2
    assert [e.data.step for e in watch.of("inc-1", "AgentStep")] == [0, 1]
    assert len(chat.requests) == 3  # the turn that died is asked again; the first is not


async def test_two_responder_and_two_worker_processes_split_incidents_none_done_twice(
    js: JetStreamContext, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    env = vigil_env(tmp_path, nats_url=nats_server.url)
    incidents = [f"inc-{i}" for i in range(10)]
    async with contextlib.AsyncExitStack() as stack:
        watch = await stack.enter_async_context(watching(js))
        for role, ready in (("worker", b"working"), ("responder", b"investigating")) * 2:
            await stack.enter_async_context(vigil_role(role, ready, env))
        for incident in incidents:
            await append(js, anomaly(service=incident), incident=incident)
        for incident in incidents:
            await watch.concluded(incident, timeout=60)
    for incident in incidents:
        assert len(watch.of(incident, "InvestigationStarted")) == 1
        assert len(watch.of(incident, "RootCauseConcluded")) == 1
        steps = [e.data.step for e in watch.of(incident, "AgentStep")]
        assert steps == list(range(len(steps))) and steps
        asked = sorted(e.data.tool_call_id for e in watch.of(incident, "ToolRequested"))
        done = sorted(
            e.data.tool_call_id for e in watch.of(incident, "ToolCompleted", "ToolFailed")
        )
        assert asked == sorted(set(asked)) == done
