"""A real Prometheus for tests: backfilled with promtool, on a free loopback port, stopped at
teardown (see `tests.daemons`)."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.daemons import Daemon, binary, free_port

READY_LINE = "Server is ready to receive web requests"


def openmetrics(series: Iterable[tuple[str, dict[str, str], list[tuple[int, float]]]]) -> str:
    """OpenMetrics text for promtool: gauges (counters where the name ends in _total),
    timestamps in seconds, ending with # EOF. A name's series must come one after another."""
    lines: list[str] = []
    typed: set[str] = set()
    for name, labels, samples in series:
        if name not in typed:
            family, kind = (
                (name[: -len("_total")], "counter") if name.endswith("_total") else (name, "gauge")
            )
            lines.append(f"# TYPE {family} {kind}")
            typed.add(name)
        text = ",".join(f'{k}="{_escaped(v)}"' for k, v in sorted(labels.items()))
        lines += [f"{name}{{{text}}} {_number(v)} {t}" for t, v in samples]
    return "\n".join(lines) + "\n# EOF\n"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    return "NaN" if math.isnan(v) else repr(v)


class PrometheusServer:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        config.write_text("global:\n  evaluation_interval: 1m\n")  # nothing to scrape
        self.daemon = Daemon(
            "prometheus",
            [
                binary("prometheus", "prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=100y",  # the backfill lies in the past
            ],
            ready_line=READY_LINE,
        )

    def backfill(self, text: str) -> None:
        """Write blocks into the data dir (before start: a running server would not see them)."""
        source = self.root / "backfill.om"
        source.write_text(text)
        subprocess.run(
            [binary("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics",
             str(source), str(self.data)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def start(self) -> None:
        self.daemon.start()

    def stop(self) -> None:
        self.daemon.stop()
