"""`vigil api` run alone against a real nats-server, with a projector elsewhere (here, in the
test): it says where it listens, warns that it answers loopback only without tokens, serves
/api/v1, and stops on Ctrl-C even while a live stream is open."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.api.reading import read_model
from tests.eventlog.projecting import fired
from tests.vigil.vigil_cli_support import vigil_env
from vigil.broker import EmbeddedNats

ROOT = Path(__file__).resolve().parents[2]  # `python -m vigil` here runs this tree's code
DEADLINE = 15.0


async def readline(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    raw = await asyncio.wait_for(stream.readline(), DEADLINE)
    assert raw, "vigil api ended early"
    return raw.decode().rstrip("\n")


@pytest.mark.slow
async def test_the_api_alone_serves_v1_and_stops_with_a_stream_open(
    nats_server: EmbeddedNats, nc: NATS, js: JetStreamContext, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "api",
        env=vigil_env(tmp_path, nats_url=nats_server.url), cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        warning = await readline(proc.stderr)
        assert "no API token configured (VIGIL_API_TOKENS)" in warning
        assert "loopback clients only" in warning
        listening = await readline(proc.stdout)
        found = re.fullmatch(r"API    (http://127\.0\.0\.1:\d+)/api/v1 \(.*\)", listening)
        assert found, listening
        base = found.group(1)
        assert await readline(proc.stdout) == f"HTTP   {base}/webhooks/alertmanager"
        assert "VIGIL_WEBHOOK_TOKEN is not set" in await readline(proc.stderr)
        assert await readline(proc.stdout) == "vigil api is up"
        async with read_model(nc, js, tmp_path / "elsewhere.duckdb") as model:
            await model.publish(fired("fp", 0, "inc-1"))
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                me = await client.get("/api/v1/whoami")
                assert me.json() == {"name": "local", "scope": "operate"}
                listed = (await client.get("/api/v1/incidents")).json()
                assert [i["incident_id"] for i in listed["incidents"]] == ["inc-1"]
                async with client.stream("GET", "/api/v1/stream") as live:
                    assert live.status_code == 200
                    started = time.monotonic()
                    proc.send_signal(signal.SIGINT)
                    assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
                    stopped_in = time.monotonic() - started
        assert await readline(proc.stdout) == "vigil api stopped"
        assert stopped_in < 5, f"an open stream held the stop for {stopped_in:.1f}s"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_the_api_alone_needs_a_nats_url(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", "api",
        env=vigil_env(tmp_path), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode == 2
    assert "VIGIL_NATS_URL is required" in err.decode()
