"""The incident scenarios under tests/scenarios/ (docs/scenarios.md): every folder loads, they
cover the categories, the generator gives them back byte for byte, promtool takes every
metrics file, and each alert fires where a real Prometheus says its rule would; a broken
folder is refused with one line naming the file and the field."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.daemons import binary
from tests.detector.prometheus_server import PrometheusServer
from tests.scenarios.generate import generate
from tests.scenarios_heldout.generate import generate as generate_held_out
from vigil.scenarios import (
    FILES,
    Scenario,
    ScenarioError,
    check_metrics,
    find_scenarios,
    load_scenario,
)

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
HELD_OUT = ROOT.parent / "scenarios_heldout"  # written by someone who had not read the analyst
MUST_COVER = {
    "deploy_or_config_change",
    "dependency_failure",
    "memory_leak",
    "infrastructure_node",
    "traffic_surge",
    "resource_saturation",
    "unknown",
}


def scenarios() -> list[Scenario]:
    return [load_scenario(folder) for folder in find_scenarios(ROOT)]


def test_every_folder_loads_and_the_set_covers_the_categories() -> None:
    loaded = scenarios()
    assert len(loaded) >= 12
    categories = {s.expected.root_cause_category for s in loaded}
    assert categories >= MUST_COVER, MUST_COVER - categories
    assert len({s.meta.start for s in loaded}) == len(loaded), "one start per scenario"
    for s in loaded:
        assert s.metrics.name == "metrics.om.gz"
        assert s.meta.start.year == 2026 and s.meta.start.month < 11
        assert s.meta.start.second == 0 and s.meta.start.utcoffset() == timedelta(0)
        assert 75 <= s.trigger.starts_at_minute <= s.meta.duration_minutes - 15
        assert all(a.starts_at_minute >= 0 and a.expr for a in s.alerts)
        names = [a.labels["alertname"] for a in s.alerts]
        assert len(names) == len(set(names)), s.name


@pytest.mark.parametrize(
    ("root", "make"), [(ROOT, generate), (HELD_OUT, generate_held_out)], ids=["suite", "held-out"]
)
def test_the_generator_gives_every_folder_back_byte_for_byte(
    tmp_path: Path, root: Path, make: Callable[[Path], list[Path]]
) -> None:
    written = make(tmp_path)
    assert sorted(f.name for f in written) == [p.name for p in find_scenarios(root)]
    for folder in written:
        load_scenario(folder)
        for file in sorted(folder.iterdir()):
            assert file.read_bytes() == (root / folder.name / file.name).read_bytes(), file


def test_the_scenarios_stay_small() -> None:
    size = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file() and ".pyc" not in f.name)
    assert size < 1_500_000


def _holds(held: set[int], duration: int, for_minutes: int) -> int | None:
    """The first minute (from 5) from which the condition holds `for_minutes` more minutes."""
    for c in range(5, duration + 1 - for_minutes):
        if all(m in held for m in range(c, c + for_minutes + 1)):
            return c
    return None


def test_promtool_takes_every_file_and_prometheus_fires_the_alerts_as_written(
    tmp_path: Path,
) -> None:
    """One Prometheus holds every scenario (each window lies on its own day): each alert's
    expr, queried over its window, begins to hold where alerts.yaml says (within a minute)
    and holds at its starts_at_minute."""
    loaded = scenarios()
    prometheus = PrometheusServer(tmp_path / "prometheus")
    promtool = binary("promtool", "prometheus")
    for s in loaded:
        text = tmp_path / f"{s.name}.om"
        text.write_bytes(gzip.decompress(s.metrics.read_bytes()))
        done = subprocess.run(
            [
                promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(text),
                str(prometheus.data),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{s.name}: {done.stdout[-500:]} {done.stderr[-500:]}"
    prometheus.start()
    try:
        with httpx.Client(base_url=prometheus.url, timeout=30) as client:
            for s in loaded:
                raw = yaml.safe_load((s.path / "alerts.yaml").read_text())
                for alert, written in zip(s.alerts, raw, strict=True):
                    assert alert.expr is not None
                    reply = client.get(
                        "/api/v1/query_range",
                        params={
                            "query": alert.expr,
                            "start": s.at(0).timestamp(),
                            "end": s.at(s.meta.duration_minutes).timestamp(),
                            "step": 60,
                        },
                    )
                    reply.raise_for_status()
                    held = {
                        round((float(t) - s.at(0).timestamp()) / 60)
                        for series in reply.json()["data"]["result"]
                        for t, _ in series["values"]
                    }
                    what = f"{s.name}: {alert.labels['alertname']}"
                    assert alert.starts_at_minute in held, what
                    pending = alert.starts_at_minute - written["for_minutes"]
                    first = _holds(held, int(s.meta.duration_minutes), written["for_minutes"])
                    assert first is not None and abs(first - pending) <= 1, (what, first, pending)
    finally:
        prometheus.stop()


# --- broken folders ----------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of a good scenario, to break."""
    good = find_scenarios(ROOT)[0]
    copy = tmp_path / good.name
    shutil.copytree(good, copy)
    return copy


def _edit(path: Path, change: Callable[[Any], object]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _refused(folder: Path) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(folder)
    return str(caught.value)


def test_a_missing_expected_yaml_is_named(folder: Path) -> None:
    (folder / "expected.yaml").unlink()
    assert _refused(folder) == f"{folder.name}: expected.yaml is missing"


def test_an_unknown_category_is_named(folder: Path) -> None:
    _edit(folder / "expected.yaml", lambda d: d.update(root_cause_category="gremlins"))
    message = _refused(folder)
    assert message.startswith(f"{folder.name}: expected.yaml.root_cause_category: "), message


def test_a_name_that_is_not_the_folders_is_named(folder: Path) -> None:
    _edit(folder / "scenario.yaml", lambda d: d.update(name="something-else"))
    message = _refused(folder)
    assert message.startswith(f"{folder.name}: scenario.yaml: name is 'something-else'"), message


def test_a_change_without_version_or_key_and_value_is_named(folder: Path) -> None:
    def strip(changes: list[dict[str, object]]) -> None:
        for key in ("version", "key", "value"):
            changes[0].pop(key, None)

    _edit(folder / "changes.yaml", strip)
    assert _refused(folder) == (
        f"{folder.name}: changes.yaml[0]: a change needs a version, or a key and a value"
    )


def test_an_alert_without_a_service_is_named(folder: Path) -> None:
    _edit(folder / "alerts.yaml", lambda alerts: alerts[1]["labels"].pop("service"))
    assert _refused(folder) == f"{folder.name}: alerts.yaml[1].labels: missing service"


def test_an_alert_past_the_window_is_named(folder: Path) -> None:
    _edit(folder / "alerts.yaml", lambda alerts: alerts[0].update(starts_at_minute=500))
    message = _refused(folder)
    assert message.startswith(f"{folder.name}: alerts.yaml[0]: minute 500 is past"), message


def test_a_folder_without_metrics_is_named(folder: Path) -> None:
    (folder / "metrics.om.gz").unlink()
    assert _refused(folder) == f"{folder.name}: no metrics.om or metrics.om.gz"


def test_a_window_that_ends_in_the_future_is_named(folder: Path) -> None:
    _edit(folder / "scenario.yaml", lambda d: d.update(start="2099-01-01T00:00:00Z"))
    message = _refused(folder)
    assert message.startswith(f"{folder.name}: scenario.yaml.start: the window ends at 2099-")


def test_a_minute_that_is_not_a_number_and_a_file_that_is_a_folder_are_named(
    folder: Path,
) -> None:
    _edit(folder / "alerts.yaml", lambda alerts: alerts[1].update(ends_at_minute=float("nan")))
    message = _refused(folder)
    assert message.startswith(f"{folder.name}: alerts.yaml[1].ends_at_minute: "), message
    _edit(folder / "alerts.yaml", lambda alerts: alerts[1].update(ends_at_minute=None))
    (folder / "changes.yaml").unlink()
    (folder / "changes.yaml").mkdir()
    assert _refused(folder) == f"{folder.name}: changes.yaml is not a file"
    (folder / "changes.yaml").rmdir()
    (folder / "metrics.om").mkdir()
    assert _refused(folder) == f"{folder.name}: both metrics.om and metrics.om.gz"


def _metrics_refused(folder: Path, text: str) -> str:
    (folder / "metrics.om.gz").unlink(missing_ok=True)
    (folder / "metrics.om").write_text(text)
    scenario = load_scenario(folder)
    with pytest.raises(ScenarioError) as caught:
        check_metrics(scenario, scenario.metrics)
    return str(caught.value)


def test_samples_outside_the_window_or_none_at_all_are_named(folder: Path) -> None:
    start = load_scenario(folder).meta.start.timestamp()
    inside = f'up{{service="a"}} 1 {start + 60:.0f}\n'
    assert check_metrics(load_scenario(folder), _plain(folder, inside + "# EOF\n")) == 1
    millis = f'up{{service="a"}} 1 {(start + 60) * 1000:.0f}\n'
    message = _metrics_refused(folder, inside + millis + "# EOF\n")
    assert message.startswith(f"{folder.name}: metrics.om: line 2: timestamp "), message
    assert "is outside the window" in message
    assert _metrics_refused(folder, "# EOF\n") == f"{folder.name}: metrics.om: no samples"
    message = _metrics_refused(folder, 'up{service="a"} 1\n# EOF\n')
    assert message == f"{folder.name}: metrics.om: line 1 has no timestamp (seconds)"


def _plain(folder: Path, text: str) -> Path:
    path = folder.parent / "plain.om"
    path.write_text(text)
    return path


def test_the_documented_example_is_a_scenario_promtool_takes(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scenarios.md").read_text()
    folder = tmp_path / "payments-pool"
    folder.mkdir()
    for name in (*FILES, "metrics.om"):
        found = re.search(rf"`{re.escape(name)}`[^\n]*\n```[a-z]*\n(.*?)```", doc, re.S)
        assert found, name
        (folder / name).write_text(found.group(1))
    scenario = load_scenario(folder)
    assert scenario.now == scenario.at(20)
    assert scenario.changes[1].ref == "db_pool_max_connections=5"
    assert scenario.expected.root_cause_service == "payments"
    for t in re.findall(r"\} \S+ (\d+)$", (folder / "metrics.om").read_text(), re.M):
        assert scenario.at(0).timestamp() <= int(t) <= scenario.at(30).timestamp()
    done = subprocess.run(
        [binary("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics",
         str(folder / "metrics.om"), str(tmp_path / "blocks")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
