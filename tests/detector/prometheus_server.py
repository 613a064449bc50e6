"""A real Prometheus for tests: backfilled with promtool, on a free loopback port, stopped at
teardown, and asked by the kernel (PR_SET_PDEATHSIG) to stop if the test process dies."""

from __future__ import annotations

import contextlib
import ctypes
import math
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

READY_LINE = "Server is ready to receive web requests"
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def openmetrics(series: Iterable[tuple[str, dict[str, str], list[tuple[int, float]]]]) -> str:
    """OpenMetrics text for promtool: gauges, timestamps in seconds, ending with # EOF."""
    lines: list[str] = []
    typed: set[str] = set()
    for name, labels, samples in series:
        if name not in typed:
            lines.append(f"# TYPE {name} gauge")
            typed.add(name)
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines += [f"{name}{{{text}}} {_number(v)} {t}" for t, v in samples]
    return "\n".join(lines) + "\n# EOF\n"


def _number(v: float) -> str:
    return "NaN" if math.isnan(v) else repr(v)


class PrometheusServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []

    def backfill(self, text: str) -> None:
        """Write blocks into the data dir (before start: a running server would not see them)."""
        source = self.root / "backfill.om"
        source.write_text(text)
        subprocess.run(
            [_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics",
             str(source), str(self.data)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        config = self.root / "prometheus.yml"
        config.write_text("global:\n  evaluation_interval: 1m\n")  # nothing to scrape
        self._proc = subprocess.Popen(
            [
                _binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=100y",  # the backfill lies in the past
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True).start()
        if not ready.wait(timeout) or self._proc.poll() is not None:
            tail = "\n".join(self._log[-10:])
            self.stop()
            raise RuntimeError(f"prometheus did not become ready:\n{tail}")

    def _read_log(self, ready: threading.Event) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:  # read to the end, so the pipe never fills up
            self._log.append(line.rstrip())
            if READY_LINE in line:
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


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: apt-get install prometheus")
    return found
