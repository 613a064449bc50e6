"""`vigil shop`: the demo shop alone, on fixed ports, as the fleet's compose file runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from vigil.shop import SHOP

ROOT = Path(__file__).resolve().parents[2]
PORTS = len(SHOP) + 1  # each service, then the admin gateway


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports free on 127.0.0.1 (held just long enough to check)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


def shop_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vigil", "shop", *args]


def env() -> dict[str, str]:
    """This worktree's code first (the editable install may point at another checkout)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}


@contextlib.asynccontextmanager
async def running(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """`vigil shop ARGS` until it said it is up; its lines so far. SIGTERM at the end."""
    proc = await asyncio.create_subprocess_exec(
        *shop_command(*args), env=env(), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not lines or not lines[-1].startswith("shop is up"):
                line = (await proc.stdout.readline()).decode()
                assert line, f"vigil shop ended before it was up: {lines}"
                lines.append(line.rstrip("\n"))
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                await proc.wait()


async def test_the_shop_serves_on_the_ports_asked_with_traffic_and_stops_on_sigterm() -> None:
    base = free_ports(PORTS)
    async with running("--port", str(base), "--rate", "50") as (proc, lines):
        names = [spec.name for spec in SHOP]
        assert [line.split()[0] for line in lines[: len(names)]] == names
        assert lines[len(names)].startswith(f"admin    http://127.0.0.1:{base + len(names)}/")
        async with httpx.AsyncClient(timeout=5) as client:
            # Each service on its port, in the order of SHOP, and the gateway after them.
            for i, name in enumerate(names):
                release = await client.get(f"http://127.0.0.1:{base + i}/admin/release")
                assert release.json()["service"] == name
            gateway = f"http://127.0.0.1:{base + len(names)}/services/checkout/admin"
            deployed = await client.post(f"{gateway}/deploy", json={"version": "1.5.0"})
            assert deployed.json() == {"service": "checkout", "previous": "1.4.0", "now": "1.5.0"}
            # The traffic reaches the frontend: its counter grows (no event to await: look).
            for _ in range(100):
                metrics = (await client.get(f"http://127.0.0.1:{base}/metrics")).text
                if "http_requests_total{" in metrics:
                    break
                await asyncio.sleep(0.1)
            assert 'http_requests_total{code="200",service="frontend"}' in metrics
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    with socket.socket() as again:  # every port is let go
        again.bind(("127.0.0.1", base))


async def test_a_port_taken_is_one_line_naming_the_ports() -> None:
    base = free_ports(PORTS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        proc = await asyncio.create_subprocess_exec(
            *shop_command("--port", str(base)), env=env(), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        f"vigil: cannot listen on 127.0.0.1, ports {base} to {base + len(SHOP)}: "
        "Address already in use"
    ]
    assert out == b""


@pytest.mark.parametrize("port", ["0", "65531"])
async def test_a_port_out_of_range_is_refused(port: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *shop_command("--port", port), env=env(), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "--port" in err.decode()
