"""The responder's tools query real servers: the detector's planted Prometheus (its fixture,
shared), a second one planted with one service's golden signals, and a real Alertmanager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from nats.js import JetStreamContext

from tests.detector.conftest import prometheus
from tests.detector.prometheus_server import PrometheusServer, openmetrics
from tests.responder import golden
from tests.responder.tool_workers import Outcomes

__all__ = ["golden_prometheus", "outcomes", "prometheus"]


@pytest.fixture(scope="module")
def golden_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus 2.x serving two hours of checkout's golden signals (tests/responder/golden.py)."""
    server = PrometheusServer(tmp_path_factory.mktemp("golden-prometheus"))
    server.backfill(openmetrics(golden.series()))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def outcomes(js: JetStreamContext) -> AsyncIterator[Outcomes]:
    """Every ToolCompleted / ToolFailed on the stream, by tool call id, as they come."""
    watch = Outcomes()
    sub = await js.subscribe("vigil.evt.>", cb=watch.on_message, ordered_consumer=True)
    yield watch
    await sub.unsubscribe()
