"""The servers under load, each in its own process as in production: the bare FastAPI endpoint
under uvicorn, and `vigil up` itself (embedded nats-server, projector, HTTP API)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from vigil.runtime import read_runtime

UVICORN_READY = re.compile(r"Uvicorn running on (http://\S+)")
VIGIL_READY = "vigil is up"
START_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A server under test did not start; the message carries the end of its output."""


@dataclass(frozen=True)
class HttpConfig:
    """uvicorn's event loop and HTTP parser: what the bare endpoint is run with."""

    loop: str  # "asyncio" or "uvloop"
    http: str  # "h11" or "httptools"

    @property
    def label(self) -> str:
        return f"{self.loop}+{self.http}"


@dataclass(frozen=True)
class VigilUp:
    url: str
    nats_url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def bare_endpoint(config: HttpConfig) -> AsyncIterator[str]:
    """bench.bare_endpoint under uvicorn on a free port, no access log; yields its base URL."""
    args = [
        sys.executable, "-m", "uvicorn", "bench.bare_endpoint:app", "--host", "127.0.0.1",
        "--port", "0", "--loop", config.loop, "--http", config.http, "--no-access-log",
    ]  # fmt: skip
    async with _child(args, os.environ.copy(), stream="stderr") as (proc, lines):
        found = await _wait_for(proc, lines, lambda line: UVICORN_READY.search(line))
        match = UVICORN_READY.search(found)
        assert match
        yield match.group(1).rstrip("/")


@contextlib.asynccontextmanager
async def vigil_up(data_dir: Path, token: str) -> AsyncIterator[VigilUp]:
    """`vigil up` in a fresh data dir with its embedded nats-server, on a free HTTP port."""
    port = free_port()
    env = os.environ.copy()
    for name in [n for n in env if n.startswith("VIGIL_")]:
        del env[name]  # a developer's settings must not leak into the figures
    env |= {
        "VIGIL_DATA_DIR": str(data_dir),
        "VIGIL_HTTP_HOST": "127.0.0.1",
        "VIGIL_HTTP_PORT": str(port),
        "VIGIL_WEBHOOK_TOKEN": token,
        # The ingest figures are the webhook's alone, as they always were: every request
        # opens new incidents, and investigating each (bench.responder measures that) would
        # share the process and keep the stream growing long after wrk stops.
        "VIGIL_RESPONDER_ENABLED": "false",
    }
    args = [sys.executable, "-m", "vigil", "up"]
    async with _child(args, env, stream="stdout") as (proc, lines):
        await _wait_for(proc, lines, lambda line: VIGIL_READY in line)
        runtime = read_runtime(data_dir)
        if runtime is None:
            raise ServerError(f"vigil is up but wrote no runtime.json in {data_dir}")
        yield VigilUp(url=f"http://127.0.0.1:{port}", nats_url=runtime.nats_url, pid=proc.pid)


@contextlib.asynccontextmanager
async def _child(
    args: list[str], env: dict[str, str], *, stream: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, asyncio.Queue[str | None]]]:
    """A child whose stdout and stderr are read all along (a full pipe would stall it); the
    lines of `stream` are handed over until it is ready. SIGTERM at the end, as a user would."""
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    tail: list[str] = []
    readers = [
        asyncio.create_task(_read(proc.stdout, lines if stream == "stdout" else None, tail)),
        asyncio.create_task(_read(proc.stderr, lines if stream == "stderr" else None, tail)),
    ]
    try:
        yield proc, lines
    except ServerError as exc:
        raise ServerError(f"{exc}; last output:\n" + "\n".join(tail[-15:])) from None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.gather(*readers)


async def _read(
    pipe: asyncio.StreamReader | None, lines: asyncio.Queue[str | None] | None, tail: list[str]
) -> None:
    assert pipe is not None
    while raw := await pipe.readline():
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        del tail[:-50]
        if lines is not None:
            lines.put_nowait(line)
    if lines is not None:
        lines.put_nowait(None)  # end of output


async def _wait_for(
    proc: asyncio.subprocess.Process,
    lines: asyncio.Queue[str | None],
    ready: Callable[[str], object],
) -> str:
    """The first line for which `ready(line)` is true; ServerError if the child ends first."""
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while (line := await lines.get()) is not None:
                if ready(line):
                    return line
    except TimeoutError:
        raise ServerError(f"not ready within {START_TIMEOUT:g}s") from None
    await proc.wait()
    raise ServerError(f"exited with {proc.returncode} before it was ready")
