"""`vigil up` serves Alertmanager's webhook: over real HTTP into the stream and DuckDB."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from vigil_cli_support import StartUp, run_vigil, vigil_env, wait_projected

from tests.alertmanager.test_alert_events import PAYLOAD
from tests.api.test_webhook import FIRING

TOKEN = "a-long-random-token"


async def test_up_takes_a_notification_into_incidents(vigil_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = await vigil_up(data, webhook_token=TOKEN)
    runtime = await up.up()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(up.http_url(), json=PAYLOAD)
        fired = await client.post(up.http_url(), json=FIRING, headers=auth)
        answer = await client.post(up.http_url(), json=PAYLOAD, headers=auth)
    assert refused.status_code == 401
    assert fired.json() == {"alerts": 2, "stored": 2, "duplicates": 0, "stale": 0}
    assert answer.status_code == 200
    assert answer.json() == {"alerts": 2, "stored": 1, "duplicates": 1, "stale": 0}
    await wait_projected(runtime, 3)
    done = await run_vigil(
        "sql",
        "SELECT title, service, firing, anomalies FROM incidents ORDER BY title",
        "--format",
        "json",
        env=vigil_env(data),
    )
    assert done.rc == 0, done
    # One group, one incident: the resolved alert leaves it with one alert firing; closing
    # the incident is the responder's decision (IncidentResolved), not the alert's.
    assert json.loads(done.out) == [
        {"title": "DiskFull", "service": "node", "firing": ["1a30ba71cca2921f"], "anomalies": 2},
    ]


async def stalled(vigil_up: StartUp, tmp_path: Path, sent: str) -> bytes:
    """What `vigil up` (its read timeout 1 s) answers a client that sends `sent` and then
    nothing, read to the end: it must end the connection by itself."""
    up = await vigil_up(tmp_path / "data", webhook_token=TOKEN, webhook_read_timeout_seconds="1")
    await up.up()
    url = httpx.URL(up.http_url())
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(sent.replace("PATH", url.path).encode())
    await writer.drain()
    try:
        async with asyncio.timeout(15):  # the bound is 1 s: the end comes by itself
            answer = await reader.read()
    finally:
        writer.close()
    async with httpx.AsyncClient(timeout=10) as client:  # and the server still serves
        assert (await client.post(up.http_url(), json=FIRING)).status_code == 401
    return answer


async def test_a_body_that_stops_coming_is_408_not_a_connection_held_for_ever(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    answer = await stalled(
        vigil_up, tmp_path,
        f"POST PATH HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {TOKEN}\r\n"
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"version": ',
    )  # fmt: skip
    status, _, rest = answer.decode().partition("\r\n")
    assert status == "HTTP/1.1 408 Request Timeout", answer
    assert "did not arrive within 1s" in rest


async def test_headers_that_stop_coming_end_the_connection(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    """A slowloris: part of the headers, then nothing. The connection is closed by Vigil."""
    answer = await stalled(vigil_up, tmp_path, "POST PATH HTTP/1.1\r\nHost: vigil\r\n")
    assert answer == b""  # closed, without an answer
