"""service_signals against a real Prometheus planted with checkout's golden signals
(tests/responder/golden.py): every number below is worked out from how they were planted."""

from __future__ import annotations

import statistics
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from eventlog.envelope import new_event
from eventlog.payloads import ToolCompleted, ToolRequested
from eventlog.publisher import EventPublisher
from responder.tools import ToolSettings, default_tools
from responder.tools.config_file import ConfigFileError
from responder.tools.prometheus import PrometheusFailed
from responder.tools.signals import SignalsArgs, label_value, render, service_signals
from tests.daemons import free_port
from tests.detector.prometheus_server import PrometheusServer
from tests.responder import golden
from tests.responder.contexts import tool_context
from tests.responder.tool_workers import Outcomes, workers

ONSET, NOW, MIB = golden.minute(golden.ONSET), golden.minute(golden.NOW), golden.MIB


async def signals(
    nc: NATS, prometheus: PrometheusServer, service: str = "checkout", **settings: Any
) -> dict[str, Any]:
    ctx = tool_context(nc, NOW, onset=ONSET, prometheus_url=prometheus.url, **settings)
    result = await service_signals(ctx, SignalsArgs(service=service))
    return result["signals"]  # type: ignore[no-any-return]


def error_ratio_at(k: int) -> float:
    """The 5xx ratio over the 5 minutes up to minute k: each minute after the onset fails
    120 of 600 requests, each before 6."""
    bad = min(5, max(0, k - golden.ONSET))
    return (bad * 120 + (5 - bad) * 6) / 3000


async def test_before_and_after_the_onset(nc: NATS, golden_prometheus: PrometheusServer) -> None:
    told = await signals(nc, golden_prometheus)
    traffic, errors = told["traffic"], told["errors"]
    assert traffic["unit"] == "requests/s" and traffic["change"] == 0.0
    assert traffic["before"] == {"n": 30, "mean": 10.0, "min": 10.0, "max": 10.0, "last": 10.0}
    assert traffic["after"] == {"n": 31, "mean": 10.0, "min": 10.0, "max": 10.0, "last": 10.0}
    assert errors["before"]["mean"] == pytest.approx(0.01) and errors["before"]["n"] == 30
    assert errors["before"]["max"] == pytest.approx(0.01)
    after = statistics.fmean(error_ratio_at(k) for k in range(golden.ONSET, golden.NOW + 1))
    assert errors["after"]["mean"] == pytest.approx(after)  # the 5m rate takes 5 minutes to climb
    assert errors["after"]["max"] == pytest.approx(0.2) and errors["after"]["last"] == 0.2
    assert errors["change"] == pytest.approx(after / 0.01 - 1, abs=1e-4)
    latency = told["latency_p99"]
    assert latency["before"]["max"] == pytest.approx(0.099)  # all under 0.1 s
    assert latency["after"]["last"] == pytest.approx(0.975)  # 20% take 0.5-1 s
    assert told["cpu"]["before"]["mean"] == pytest.approx(0.5) and told["cpu"]["change"] == 0.0
    up = told["up"]
    assert (up["before"]["min"], up["after"]["max"], up["change"]) == (1.0, 0.5, -0.5)
    assert up["trend"]["before_per_minute"] == 0.0 and up["trend"]["per_minute"] < 0


async def test_a_leak_is_a_slope_and_nothing_after_now_is_seen(
    nc: NATS, golden_prometheus: PrometheusServer
) -> None:
    memory = (await signals(nc, golden_prometheus))["memory"]
    assert memory["trend"] == {"per_minute": MIB, "before_per_minute": MIB}
    assert memory["before"]["mean"] == golden.MEMORY_BASE + 44.5 * MIB  # minutes 30..59
    assert memory["after"]["mean"] == golden.MEMORY_BASE + 75 * MIB  # minutes 60..90
    # The series climbs on for half an hour past now: none of that is seen.
    assert memory["after"]["last"] == memory["after"]["max"] == golden.memory(golden.NOW)


async def test_a_metric_not_there_is_no_data_not_a_failure(
    nc: NATS, golden_prometheus: PrometheusServer
) -> None:
    told = await signals(nc, golden_prometheus)
    assert told["restarts"] == {"query": told["restarts"]["query"], "unit": told["restarts"][
        "unit"], "no_data": True}  # fmt: skip
    assert set(told) == {"traffic", "errors", "latency_p99", "cpu", "memory", "restarts", "up"}
    assert all("error" not in signal for signal in told.values())


@pytest.mark.parametrize("service", golden.HOSTILE)
async def test_a_hostile_service_label_is_only_ever_a_label_value(
    nc: NATS, golden_prometheus: PrometheusServer, service: str
) -> None:
    """The name matches exactly its own series (1 request/s), no other and no vector(1)."""
    told = await signals(nc, golden_prometheus, service)
    assert told["traffic"]["after"]["mean"] == 1.0 and told["traffic"]["before"]["max"] == 1.0
    assert all(told[s].get("no_data") for s in ("cpu", "memory", "restarts", "up"))
    # It never answered a 5xx: its error ratio is 0 all along, not "no data".
    errors = told["errors"]
    assert errors["before"]["max"] == errors["after"]["max"] == 0.0 and errors["change"] == 0.0
    assert told["traffic"]["query"] == render(
        'sum(rate(http_requests_total{service="{service}"}[5m]))', service
    )


def test_label_values_are_escaped_as_promql_reads_them() -> None:
    assert label_value('checkout"} or vector(1) #') == 'checkout\\"} or vector(1) #'
    assert label_value("a\\b\nc") == "a\\\\b\\nc"


async def test_a_signals_file_overrides_adds_and_drops(
    nc: NATS, golden_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    path = tmp_path / "signals.yaml"
    path.write_text(
        "signals:\n"
        '  memory: max(process_resident_memory_bytes{service="{service}"}) / 2\n'
        '  requests_500: sum(rate(http_requests_total{service="{service}",code="500"}[5m]))\n'
        '  broken: sum(rate(http_requests_total{service="{service}"}[5m])\n'
        "  up: null\n"
    )
    told = await signals(nc, golden_prometheus, signals_file=path)
    assert set(told) == {"traffic", "errors", "latency_p99", "cpu", "memory", "restarts",
                         "requests_500", "broken"}  # fmt: skip
    assert told["memory"]["after"]["last"] == golden.memory(golden.NOW) / 2
    assert told["requests_500"]["before"]["mean"] == pytest.approx(0.1)
    assert told["requests_500"]["after"]["last"] == pytest.approx(2.0)
    assert told["requests_500"]["unit"] is None
    assert told["broken"]["error"].startswith("bad_data: ")  # its own, not the tool's failure
    assert told["traffic"]["after"]["mean"] == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('signals:\n  cpu: sum(rate(x[5m]))\n', "signals.cpu: the template has no {service}"),
        ("signals:\n  cpu: sum(x{service='{service}'})\n",
         "signals.cpu: {service} must stand inside a double-quoted label value"),
        ('signals:\n  cpu: sum(x{service="{service}"}) or {service}\n',
         "signals.cpu: {service} must stand inside a double-quoted label value"),
        ('signal:\n  cpu: x{service="{service}"}\n', "signal: Extra inputs are not permitted"),
        ('signals:\n  "no way": x{service="{service}"}\n', "signals.no way.[key]: String should"),
        ("signals: [cpu\n", "not valid YAML"),
        ("signals: 3\n", "signals: Input should be a valid dictionary"),
    ],
)  # fmt: skip
async def test_a_wrong_signals_file_is_named_with_its_key(
    nc: NATS, golden_prometheus: PrometheusServer, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "signals.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as caught:
        await signals(nc, golden_prometheus, signals_file=path)
    assert str(caught.value).startswith(f"VIGIL_SIGNALS={path}: ")
    assert message in str(caught.value)


async def test_a_missing_signals_file_and_no_prometheus_fail_the_call(
    nc: NATS, golden_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigFileError, match="cannot read it: No such file or directory"):
        await signals(nc, golden_prometheus, signals_file=tmp_path / "nope.yaml")
    unset = tool_context(nc, NOW)
    with pytest.raises(PrometheusFailed, match=r"^no Prometheus configured \(VIGIL_PROMETHEUS_"):
        await service_signals(unset, SignalsArgs(service="checkout"))
    down = tool_context(nc, NOW, prometheus_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PrometheusFailed, match=r"^Prometheus unreachable: ConnectError"):
        await service_signals(down, SignalsArgs(service="checkout"))


async def test_through_a_worker_with_the_anomalys_onset(
    js: JetStreamContext, nc: NATS, outcomes: Outcomes, golden_prometheus: PrometheusServer
) -> None:
    """A ToolRequested carrying the onset becomes a ToolCompleted telling before and after."""
    settings = ToolSettings(prometheus_url=golden_prometheus.url)
    stop, task = await workers(nc, default_tools(), settings)
    try:
        request = ToolRequested(tool_call_id="sig", tool_name="service_signals",
                                args={"service": "checkout", "before_minutes": 10},
                                now=NOW, onset=ONSET)  # fmt: skip
        await EventPublisher(js).publish(new_event(request, incident_id="inc-9", source="test"))
        (done,) = await outcomes.of("sig")
    finally:
        stop.set()
        await task
    assert isinstance(done, ToolCompleted), done
    assert done.result["onset"] == ONSET.isoformat()
    assert done.result["from"] == (ONSET - timedelta(minutes=10)).isoformat()
    errors = done.result["signals"]["errors"]
    assert errors["before"]["n"] == 10 and errors["before"]["mean"] == pytest.approx(0.01)
    assert errors["after"]["last"] == pytest.approx(0.2)
