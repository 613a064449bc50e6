"""Prometheus and Alertmanager from Debian's packages, run by `vigil eval` and `vigil demo`:
on a free loopback port, ready when their log says so, stopped with us.

Each child is asked by the kernel (PR_SET_PDEATHSIG) to stop if this process dies, even by
kill -9, so an interrupted evaluation or demo leaves no server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from vigil.broker import die_with_parent

PROMETHEUS_READY = "Server is ready to receive web requests"
ALERTMANAGER_READY = 'msg="Listening on"'
LOG_TAIL = 10


class ServerError(RuntimeError):
    """A server could not start (or a tool failed); the message says why, in one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str, package: str) -> str:
    """The program's path; ServerError naming the Debian package when it is missing."""
    found = shutil.which(name)
    if not found:
        raise ServerError(f"{name} not found: install it with `sudo apt-get install {package}`")
    return found


class ServerProcess:
    """One server process; `start` returns once `ready_line` is in its log (stderr)."""

    def __init__(self, name: str, argv: list[str], ready_line: str) -> None:
        self.name = name
        self.argv = argv
        self.ready_line = ready_line
        self.log: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        ready = asyncio.Event()
        self._drain = asyncio.create_task(self._read_log(self._proc, ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout)
        if not ready.is_set() or self._proc.returncode is not None:
            tail = " | ".join(self.log[-3:])
            await self.stop()
            raise ServerError(f"{self.name} did not become ready: {tail or 'no output'}")

    async def _read_log(self, proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():  # to the end, so the pipe never fills up
            line = raw.decode(errors="replace").rstrip()
            self.log = [*self.log[-LOG_TAIL:], line]
            if self.ready_line in line:
                ready.set()
        await proc.wait()
        ready.set()  # exited: start() sees the return code

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


async def run_tool(argv: list[str], timeout: float = 300.0) -> str:
    """Run a program to its end; its output, or ServerError with the last of it."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ServerError(f"{Path(argv[0]).name} took longer than {timeout:g}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        last = " | ".join(line for line in text.strip().splitlines()[-3:])
        raise ServerError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {last}")
    return text


async def backfill(openmetrics: Path, data_dir: Path) -> None:
    """promtool's blocks from an OpenMetrics file, written into a Prometheus data dir (before
    the server starts: a running one would not see them)."""
    promtool = binary("promtool", "prometheus")
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    await run_tool(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)]
    )


def prometheus(
    config: Path, data_dir: Path, port: int, *, retention: str = "100y"
) -> ServerProcess:
    """Prometheus on 127.0.0.1:`port` with `config`; a long retention by default, since
    backfilled windows lie in the past and would otherwise be deleted at start."""
    return ServerProcess(
        "prometheus",
        [
            binary("prometheus", "prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.retention.time={retention}",
        ],
        PROMETHEUS_READY,
    )


def alertmanager(config: Path, data_dir: Path, port: int) -> ServerProcess:
    """Alertmanager on 127.0.0.1:`port`, alone (no cluster port)."""
    return ServerProcess(
        "alertmanager",
        [
            binary("prometheus-alertmanager", "prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
        ],
        ALERTMANAGER_READY,
    )


@contextlib.asynccontextmanager
async def running(server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The server, started for the block and stopped after it, whatever happens."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
