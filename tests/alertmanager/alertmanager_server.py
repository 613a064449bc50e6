"""A real Alertmanager (Debian's 0.25) for tests, routing to a Vigil webhook with a bearer token,
its notification timers shortened so a test waits a second, not minutes."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.daemons import Daemon, binary, free_port


def alertmanager_config(
    webhook_url: str, token: str, routes: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """What deploy/alertmanager.yml says, with fast timers. `routes`: alertname -> the webhook
    URLs its groups go to (several Vigil replicas behind one Alertmanager); other alerts go
    to `webhook_url`."""
    config = yaml.safe_load((Path(__file__).parents[2] / "deploy/alertmanager.yml").read_text())
    config["route"].update(group_wait="200ms", group_interval="500ms", repeat_interval="1h")
    (hook,) = config["receivers"][0]["webhook_configs"]
    hook["url"] = webhook_url
    hook["http_config"]["authorization"] = {"type": "Bearer", "credentials": token}
    for name, urls in (routes or {}).items():
        config["receivers"].append(
            {"name": name, "webhook_configs": [{**hook, "url": url} for url in urls]}
        )
        config["route"].setdefault("routes", []).append(
            {"receiver": name, "matchers": [f"alertname={name}"]}
        )
    return config


class AlertmanagerServer:
    def __init__(
        self, root: Path, webhook_url: str, token: str, routes: dict[str, list[str]] | None = None
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        config = root / "alertmanager.yml"
        config.write_text(yaml.safe_dump(alertmanager_config(webhook_url, token, routes)))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon = Daemon(
            "alertmanager",
            [
                binary("prometheus-alertmanager", "prometheus-alertmanager"),
                f"--config.file={config}",
                f"--storage.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no gossip port: a single instance
            ],
            ready_line='msg="Listening on"',
        )

    def start(self) -> None:
        self.daemon.start()

    def stop(self) -> None:
        self.daemon.stop()

    async def silence(self, matchers: dict[str, str], ends_at: datetime) -> str:
        """POST /api/v2/silences (equality matchers); returns the silence's id."""
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in matchers.items()
            ],
            "startsAt": (ends_at - timedelta(days=1)).isoformat(),
            "endsAt": ends_at.isoformat(),
            "createdBy": "vigil tests",
            "comment": "maintenance",
        }
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            answer = await client.post("/api/v2/silences", json=body)
        answer.raise_for_status()
        return str(answer.json()["silenceID"])

    async def expire_silence(self, silence_id: str) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            answer = await client.delete(f"/api/v2/silence/{silence_id}")
        answer.raise_for_status()

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """As Prometheus does: POST /api/v2/alerts."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            answer = await client.post("/api/v2/alerts", json=alerts)
        answer.raise_for_status()


def am_alert(
    name: str, starts_at: datetime, ends_at: datetime | None = None, **labels: str
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} on {labels.get('service', '?')}"},
        "startsAt": starts_at.isoformat(),
        "generatorURL": "http://prometheus.test/graph?g0.expr=up",
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert
