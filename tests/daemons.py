"""Real servers from Debian's packages for tests (Prometheus, Alertmanager): started on free
loopback ports, ready when their log says so, stopped at teardown, and asked by the kernel
(PR_SET_PDEATHSIG) to stop if the test process dies first."""

from __future__ import annotations

import contextlib
import subprocess
import threading

from vigil import servers
from vigil.broker import die_with_parent
from vigil.servers import free_port

__all__ = ["Daemon", "binary", "free_port"]


def binary(name: str, package: str) -> str:
    try:
        return servers.binary(name, package)
    except servers.ServerError:
        raise RuntimeError(
            f"{name} not found: run `make test` (as root it installs the Debian packages), "
            f"or: sudo apt-get install {package}"
        ) from None


class Daemon:
    """One server process; `start` returns once `ready_line` is in its log (stderr)."""

    def __init__(self, name: str, argv: list[str], ready_line: str) -> None:
        self.name = name
        self.argv = argv
        self.ready_line = ready_line
        self.log: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.log = []
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self._proc, ready), daemon=True).start()
        if not ready.wait(timeout) or self._proc.poll() is not None:
            tail = "\n".join(self.log[-10:])
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready:\n{tail}")

    def _read_log(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # read to the end, so the pipe never fills up
            self.log.append(line.rstrip())
            if self.ready_line in line:
                ready.set()
        ready.set()  # exited: start() sees poll() is not None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
