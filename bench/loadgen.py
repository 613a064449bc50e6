"""wrk as the load generator: one run, its figures read from the JSON line our Lua script prints.

A Python load generator (httpx) tops out near 600 requests/s on this machine, far below the
server, so the load comes from wrk in its own process; its Lua script (bench/wrk/) writes
Alertmanager-shaped bodies and counts every answer that was not a 2xx.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson

SCRIPT = Path(__file__).parent / "wrk" / "alertmanager.lua"
MARKER = "wrk-json "
CONNECTIONS = 32
THREADS = 2


class LoadgenError(RuntimeError):
    """wrk is missing, failed, or printed no figures."""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise LoadgenError(
            "wrk not found: run `make bench` (as root it installs it), or: sudo apt-get install wrk"
        )
    return found


@dataclass(frozen=True)
class WrkRun:
    """What wrk saw in one run; `problems` lists why its figures cannot be used, if any."""

    alerts_per_request: int
    connections: int
    seconds: float
    requests: int
    ok: int
    not_2xx: int
    first_not_2xx: str
    socket_errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def req_s(self) -> float:
        return self.ok / self.seconds

    @property
    def alerts_s(self) -> float:
        return self.ok * self.alerts_per_request / self.seconds

    @property
    def problems(self) -> list[str]:
        found = [f"{n} {kind} errors" for kind, n in self.socket_errors.items() if n]
        if self.not_2xx:
            found.append(f"{self.not_2xx} answers not 2xx (first: {self.first_not_2xx})")
        if not self.ok:
            found.append("no request answered")
        return found


async def run_wrk(
    url: str,
    *,
    alerts: int,
    token: str,
    run_id: int,
    seconds: float,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
    same_body: bool = False,
) -> WrkRun:
    """One wrk run against `url`; requests slower than 30 s would count as timeouts."""
    args = [
        wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s",
        "-s", str(SCRIPT), url, "--", str(alerts), token, str(run_id),
    ]  # fmt: skip
    if same_body:
        args.append("same")
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        why = (err.decode(errors="replace") or text).strip().splitlines()[-1:] or ["no output"]
        raise LoadgenError(f"wrk exited with {proc.returncode}: {why[0]}")
    return parse_wrk_json(line[len(MARKER) :], alerts=alerts, connections=connections)


def parse_wrk_json(text: str, *, alerts: int, connections: int) -> WrkRun:
    raw = orjson.loads(text)
    errors = {k: int(v) for k, v in raw["errors"].items() if k != "status"}  # status: not_2xx
    latency = raw["latency_us"]
    return WrkRun(
        alerts_per_request=alerts,
        connections=connections,
        seconds=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        ok=raw["ok"],
        not_2xx=raw["not_2xx"],
        first_not_2xx=raw["first_not_2xx"],
        socket_errors=errors,
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
    )
