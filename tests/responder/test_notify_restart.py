"""`vigil notifier` as a process of its own, killed (SIGKILL) between milestones and started
again: the thread goes on, the opening message is never posted twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from tests.responder.notify_support import (
    BASE_URL,
    alert,
    event,
    proposal,
    publish,
    report,
    watching_sent,
)
from tests.slack_server import CHANNEL, TOKEN, FakeSlack
from tests.vigil.vigil_cli_support import vigil_env
from vigil.broker import EmbeddedNats

ROOT = Path(__file__).resolve().parents[2]  # `-m vigil` from here: this tree's code


@contextlib.asynccontextmanager
async def notifier_process(
    nats: EmbeddedNats, slack: FakeSlack
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = vigil_env(nats_url=nats.url, slack_bot_token=TOKEN, slack_channel=CHANNEL,
                    slack_api_url=slack.api_url, public_url=BASE_URL)  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "notifier", cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if b"notifying: notifier-slack" not in line:
            err = await proc.stderr.read()
            pytest.fail(f"vigil notifier did not start: {line!r} {err.decode()[-2000:]}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.slow
async def test_killed_between_milestones_the_thread_goes_on(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    async with FakeSlack().running() as slack, watching_sent(js) as sent:
        async with notifier_process(nats_server, slack) as proc:
            await publish(js, alert("inc-a"), report("inc-a"))
            await sent.wait("inc-a", 2)
            proc.send_signal(signal.SIGKILL)
        await publish(js, proposal("inc-a"))  # while no notifier runs
        async with notifier_process(nats_server, slack) as proc:
            await sent.wait("inc-a", 3)
            await publish(js, event(report("inc-a").data, "inc-a"))  # a second attempt's
            await sent.wait("inc-a", 4)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0

    [opening] = slack.top_level()
    thread = slack.thread(opening["ts"])
    assert [m["metadata"]["event_payload"]["milestone"] for m in thread] == [
        "report", "approval_needed", "report"
    ]  # fmt: skip
    assert {n.thread_ts for n in sent.data("inc-a")} == {opening["ts"]}


async def test_notifier_without_a_channel_says_what_to_set(nats_server: EmbeddedNats) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "notifier", cwd=ROOT,
        env=vigil_env(nats_url=nats_server.url, slack_bot_token=TOKEN),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert "VIGIL_SLACK_CHANNEL" in err.decode() and "Traceback" not in err.decode()
