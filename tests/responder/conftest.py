"""A real Prometheus with the detector tests' planted history, for the tools that query it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.detector import history
from tests.detector.prometheus_server import PrometheusServer, openmetrics


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus 2.x on a free loopback port, serving four hours of planted history."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.backfill(openmetrics(history.metrics()))
    server.start()
    yield server
    server.stop()
