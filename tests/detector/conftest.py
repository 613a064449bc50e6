"""A real Prometheus, backfilled with `history`, shared by the detector tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from detector.metrics import DetectorMetrics
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


@pytest.fixture
def metrics() -> DetectorMetrics:
    """The detector's counters, in a registry of the test's own."""
    return DetectorMetrics(CollectorRegistry())
