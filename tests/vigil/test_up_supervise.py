"""`vigil up` keeps taking alerts when one of its roles dies: kill -9 of the projector child
(while alerts keep arriving) or of the embedded nats-server, and the role is restarted."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from vigil_cli_support import StartUp, VigilUp, run_vigil, vigil_env, wait_projected

from eventlog.stream import EVENTS_STREAM, connect
from vigil.runtime import Runtime, read_runtime

TOKEN = "a-token-for-the-restart-tests"
DEADLINE = 30.0
WORKERS = 4
MAX_POSTS = 3000  # per worker: the loops stop by themselves whatever happens


def notification(name: str) -> dict[str, Any]:
    """An Alertmanager v4 notification of one firing alert, its own group; `name` makes
    its fingerprint."""
    fingerprint = hashlib.sha256(name.encode()).hexdigest()[:16]
    return {
        "receiver": "vigil",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name, "service": "checkout", "severity": "critical"},
                "annotations": {},
                "startsAt": datetime.now(UTC).isoformat(),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
        "groupLabels": {"alertname": name},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
    }


@dataclass
class Posters:
    """Workers posting one new alert after another to the webhook, each on a new connection
    (so a refused connection would show), until `done`."""

    url: str
    acked: list[str] = field(default_factory=list)  # fingerprints in 2xx answers
    answers: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # refused, timed out, odd answers
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def work(self, worker: int) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=DEADLINE, limits=fresh) as client:
            for n in range(MAX_POSTS):
                if self.done.is_set():
                    return
                body = notification(f"Kill9Worker{worker}Alert{n}")
                try:
                    answer = await client.post(self.url, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    async with self._changed:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        self._changed.notify_all()
                    return
                async with self._changed:
                    self.answers[answer.status_code] += 1
                    if answer.is_success:
                        self.acked.append(body["alerts"][0]["fingerprint"])
                        if answer.json() != {"alerts": 1, "stored": 1, "duplicates": 0, "stale": 0}:
                            self.errors.append(f"a new alert answered {answer.text}")
                    self._changed.notify_all()

    async def until_acked(self, count: int) -> None:
        """Until `count` alerts in all were acknowledged; fails at the first error."""
        try:
            async with asyncio.timeout(DEADLINE), self._changed:
                await self._changed.wait_for(lambda: len(self.acked) >= count or self.errors)
        except TimeoutError:
            raise AssertionError(f"not {count} acknowledged alerts: {self.answers}") from None
        assert not self.errors, self.errors


async def stream_end(runtime: Runtime) -> int:
    nc = await connect(runtime.nats_url, name="vigil-test-stream-info")
    try:
        return (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    finally:
        await nc.close()


async def detected(data: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(counts of the webhook's events, AnomalyDetected per fingerprint) from DuckDB, through
    `vigil sql` (the responder's and the workers' events come and go beside them)."""
    env = vigil_env(data)
    totals = await run_vigil(
        "sql",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, "
        "count(*) FILTER (WHERE type = 'AnomalyDetected') AS detected FROM events "
        "WHERE source = 'alertmanager'",
        "-f",
        "json",
        env=env,
    )
    assert totals.rc == 0, totals
    per_alert = await run_vigil(
        "sql",
        "SELECT data->>'fingerprint' AS fp, count(*) AS n FROM events "
        "WHERE type = 'AnomalyDetected' GROUP BY fp",
        "-f",
        "json",
        "--max-rows",
        str(WORKERS * MAX_POSTS),
        env=env,
    )
    assert per_alert.rc == 0, per_alert
    return json.loads(totals.out)[0], {r["fp"]: r["n"] for r in json.loads(per_alert.out)}


async def restarts_on_metrics(up: VigilUp) -> str:
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        scrape = await client.get(up.http_url().replace("/webhooks/alertmanager", "/metrics"))
    return scrape.text


async def stops_cleanly(up: VigilUp, data: Path) -> None:
    up.proc.send_signal(signal.SIGTERM)
    assert await up.exit_code(timeout=40) == 0, up.stderr
    assert up.lines[-1] == "vigil stopped"
    assert read_runtime(data) is None


async def test_projector_killed_while_alerts_arrive(vigil_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = await vigil_up(data, webhook_token=TOKEN)
    runtime = await up.up()
    projector = up.projector()
    posters = Posters(up.http_url())
    workers = [asyncio.create_task(posters.work(w)) for w in range(WORKERS)]
    try:
        await posters.until_acked(20)  # before the kill
        projector.kill()
        await projector.wait_exit()
        await posters.until_acked(len(posters.acked) + 1)  # the webhook goes on meanwhile
        await up.wait_for_stderr("the projector role is up again (restart 1)", DEADLINE)
        await posters.until_acked(len(posters.acked) + 20)  # after the restart
    finally:
        posters.done.set()
        await asyncio.gather(*workers)
    assert not posters.errors, posters.errors  # never refused, never timed out
    assert set(posters.answers) == {200}, posters.answers

    # The new child is ready and has caught up from the stream, exactly once.
    assert up.projector().info.pid != projector.info.pid
    await wait_projected(runtime, await stream_end(runtime), DEADLINE)
    totals, per_alert = await detected(data)
    acked = len(posters.acked)
    assert totals == {"n": acked, "ids": acked, "detected": acked}, (totals, acked)
    assert per_alert == dict.fromkeys(posters.acked, 1)

    # runtime.json names the same service; `vigil sql` above found it through it.
    again = read_runtime(data)
    assert again is not None and again.started_at > runtime.started_at
    assert (again.pid, again.nats_url, again.sql_subject) == (
        up.pid,
        runtime.nats_url,
        runtime.sql_subject,
    )
    died = [line for line in up.stderr if "role died" in line]
    assert died == [
        "ERROR vigil.supervisor: the projector role died (the projector process exited: "
        "exit code -9); restarting it in 0.5 s (restart 1)"
    ], up.stderr
    scrape = await restarts_on_metrics(up)
    assert 'vigil_role_restarts_total{role="projector"} 1.0' in scrape
    assert 'vigil_role_restarts_total{role="api"} 0.0' in scrape
    await stops_cleanly(up, data)


async def test_embedded_nats_killed_is_restarted_on_its_port_and_store(
    vigil_up: StartUp, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    up = await vigil_up(data, webhook_token=TOKEN)
    runtime = await up.up()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    before, after = notification("BeforeTheBrokerDied"), notification("AfterTheBrokerCameBack")
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        answer = await client.post(up.http_url(), json=before, headers=headers)
        assert answer.status_code == 200, answer.text
        await wait_projected(runtime, await stream_end(runtime), DEADLINE)
        nats = up.nats_server()
        nats.kill()
        await nats.wait_exit()
        await up.wait_for_stderr("the nats role is up again (restart 1)", DEADLINE)
        assert up.nats_server().info.pid != nats.info.pid
        # The webhook's NATS client reconnects by itself; until then it answers 503 and
        # Alertmanager sends the same notification again.
        async with asyncio.timeout(DEADLINE):
            while True:
                answer = await client.post(up.http_url(), json=after, headers=headers)
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503, answer.text
                await asyncio.sleep(0.05)  # poll interval: the reconnect is not announced
    await wait_projected(runtime, await stream_end(runtime), DEADLINE)  # same URL, same store
    totals, per_alert = await detected(data)
    fingerprints = [n["alerts"][0]["fingerprint"] for n in (before, after)]
    assert per_alert == dict.fromkeys(fingerprints, 1)
    assert totals == {"n": 2, "ids": 2, "detected": 2}
    died = "ERROR vigil.supervisor: the nats role died (nats-server exited: exit code -9)"
    assert any(line.startswith(died) for line in up.stderr), up.stderr
    scrape = await restarts_on_metrics(up)
    assert 'vigil_role_restarts_total{role="nats"} 1.0' in scrape
    assert 'vigil_role_restarts_total{role="projector"} 0.0' in scrape
    await stops_cleanly(up, data)
