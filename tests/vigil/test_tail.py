"""`vigil tail` as users run it (a subprocess of this worktree's code) against a real
nats-server: events appended after it starts appear as lines; Ctrl-C ends it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from eventlog.envelope import Event
from eventlog.history import StoredEvent
from eventlog.payloads import AnomalyDetected
from eventlog.publisher import EventPublisher
from eventlog.stream import EVENTS_STREAM
from tests.eventlog.samples import T0, concluded, event
from tests.vigil.vigil_cli_support import vigil_env
from vigil.broker import EmbeddedNats
from vigil.tail import line

ROOT = Path(__file__).resolve().parents[2]  # `python -m vigil` here runs this tree's code
DEADLINE = 15.0


@dataclass
class Tail:
    proc: asyncio.subprocess.Process

    async def out(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), DEADLINE)
        assert raw, f"vigil tail ended (rc {await self.proc.wait()}) before printing a line"
        return raw.decode().rstrip("\n")

    async def err(self) -> str:
        assert self.proc.stderr is not None
        raw = await asyncio.wait_for(self.proc.stderr.readline(), DEADLINE)
        assert raw, f"vigil tail ended (rc {await self.proc.wait()}) before saying anything"
        return raw.decode().rstrip("\n")


@contextlib.asynccontextmanager
async def tailing(url: str, data_dir: Path, *args: str) -> AsyncIterator[Tail]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "tail", *args,
        env=vigil_env(data_dir, nats_url=url), cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Tail(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def fired(incident: str, minute: float) -> Event:
    return event(
        AnomalyDetected(origin="alertmanager", name="HighLatency", fingerprint=f"fp-{incident}",
                        starts_at=T0, service="checkout", severity="critical"),
        incident, minute,
    )  # fmt: skip


@pytest.mark.slow
async def test_events_appended_after_it_starts_appear_one_line_each(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    publisher = EventPublisher(js)
    await publisher.publish(fired("inc-1", 0))  # before the tail: not printed
    consumers = (await js.stream_info(EVENTS_STREAM)).state.consumer_count
    async with tailing(nats_server.url, tmp_path, "inc-1") as tail:
        assert await tail.err() == "following incident inc-1 after seq 1 (Ctrl-C stops)"
        later = [fired("inc-2", 1), event(concluded(summary="the v2 deploy"), "inc-1", 2)]
        acks = await publisher.publish_many(later)
        printed = await tail.out()
        assert printed == line(StoredEvent(later[1], acks[1].seq))
        assert printed.startswith(f"2026-11-24T12:02:00.000Z  {acks[1].seq:>6}  inc-1  ")
        assert "RootCauseConcluded  top=deploy_or_config_change@api:0.9" in printed
        assert "summary=the v2 deploy" in printed
        tail.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.proc.wait(), DEADLINE) == 0
    assert (await js.stream_info(EVENTS_STREAM)).state.consumer_count == consumers


@pytest.mark.slow
async def test_from_the_start_of_every_incident_then_live(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    publisher = EventPublisher(js)
    await publisher.publish_many([fired("inc-1", 0), fired("inc-2", 1)])
    async with tailing(nats_server.url, tmp_path, "--from-start") as tail:
        assert await tail.err() == "following all incidents after seq 0 (Ctrl-C stops)"
        first = [await tail.out(), await tail.out()]
        assert [s.split()[2] for s in first] == ["inc-1", "inc-2"]
        assert "AnomalyDetected  origin=alertmanager name=HighLatency" in first[0]
        await publisher.publish(fired("inc-3", 2))
        assert (await tail.out()).split()[1:3] == ["3", "inc-3"]
        tail.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.proc.wait(), DEADLINE) == 0


@pytest.mark.slow
async def test_after_a_sequence_and_bad_arguments(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    await EventPublisher(js).publish_many([fired("inc-1", 0), fired("inc-2", 1)])
    async with tailing(nats_server.url, tmp_path, "--after", "1") as tail:
        assert await tail.err() == "following all incidents after seq 1 (Ctrl-C stops)"
        assert (await tail.out()).split()[1:3] == ["2", "inc-2"]
        tail.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.proc.wait(), DEADLINE) == 0
    async with tailing(nats_server.url, tmp_path, "a.b") as tail:
        assert "not an incident id" in await tail.err()
        assert await asyncio.wait_for(tail.proc.wait(), DEADLINE) == 2


def test_text_from_events_cannot_drive_the_terminal() -> None:
    # An alert's name is outside text: an escape sequence in it could retitle or clear the
    # terminal `vigil tail` prints on.
    data = AnomalyDetected(origin="alertmanager", name="\x1b]0;owned\x07\x1b[2JHigh",
                           fingerprint="fp", starts_at=T0, service="checkout")  # fmt: skip
    shown = line(StoredEvent(event(data, "inc-1", 0), 7))
    assert all(c.isprintable() for c in shown), repr(shown)
    assert "\\x1b]0;owned\\x07\\x1b[2JHigh" in shown
