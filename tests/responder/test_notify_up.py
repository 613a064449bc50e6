"""`vigil up` runs the notifier when a channel is configured: an alert through the webhook
comes out at the JSON webhook as the incident's opening milestone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.api.test_webhook import FIRING
from tests.loopback import serving
from tests.vigil.vigil_cli_support import vigil_env

ROOT = Path(__file__).resolve().parents[2]  # `-m vigil` from here: this tree's code
TOKEN = "a-long-random-token"


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, asyncio.Queue[dict[str, Any]]]]:
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: Request) -> Response:
        await got.put(orjson.loads(await request.body()))
        return Response("{}")

    async with serving(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        yield f"{url}/hook", got


@pytest.mark.slow
async def test_up_tells_the_json_webhook_of_a_new_incident(tmp_path: Path) -> None:
    async with receiving() as (hook_url, got):
        env = vigil_env(
            tmp_path / "data", webhook_token=TOKEN, responder_enabled="false",
            notify_webhook_url=hook_url, public_url="https://vigil.example.com",
        )  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vigil", "up", cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            said: list[str] = []
            async with asyncio.timeout(60):
                while "vigil is up" not in (said[-1] if said else ""):
                    line = (await proc.stdout.readline()).decode()
                    assert line, f"vigil up exited: {said}"
                    said.append(line.strip())
            url = next(s.split()[-1] for s in said if s.startswith("HTTP"))
            async with httpx.AsyncClient(timeout=10) as client:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                answer = await client.post(url, json=FIRING, headers=auth)
            assert answer.status_code == 200, answer.text
            body = await asyncio.wait_for(got.get(), 30)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)

    assert "Notify webhook (docs/notifications.md)" in said
    assert body["milestone"] == "opened"
    assert body["link"] == f"https://vigil.example.com/?incident={body['incident_id']}"
    assert body["event"]["type"] == "AnomalyDetected"
