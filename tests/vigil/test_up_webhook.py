"""`vigil up` serves Alertmanager's webhook: over real HTTP into the stream and DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from vigil_cli_support import StartUp, run_vigil, vigil_env, wait_projected

from tests.alertmanager.test_alert_events import PAYLOAD

TOKEN = "a-long-random-token"


async def test_up_takes_a_notification_into_incidents(vigil_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = await vigil_up(data, webhook_token=TOKEN)
    runtime = await up.up()
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(up.http_url(), json=PAYLOAD)
        answer = await client.post(
            up.http_url(), json=PAYLOAD, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert refused.status_code == 401
    assert answer.status_code == 200 and answer.json() == {
        "alerts": 2,
        "stored": 2,
        "duplicates": 0,
    }
    await wait_projected(runtime, 2)
    done = await run_vigil(
        "sql",
        "SELECT title, service, firing, anomalies FROM incidents ORDER BY title",
        "--format",
        "json",
        env=vigil_env(data),
    )
    assert done.rc == 0, done
    # The resolved alert leaves its incident with nothing firing; closing the incident is
    # the responder's decision (IncidentResolved), not the alert's.
    assert json.loads(done.out) == [
        {"title": "DiskFull", "service": None, "firing": [], "anomalies": 0},
        {
            "title": "HighLatency",
            "service": "checkout",
            "firing": ["1a30ba71cca2921f"],
            "anomalies": 1,
        },
    ]
