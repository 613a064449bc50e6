"""`vigil demo` as a user runs it, without a terminal: a real incident told from the stream,
the read model left for `vigil sql`, and Ctrl-C stopping everything it started."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from vigil_cli_support import VIGIL, Watched, children, cmdline, run_vigil, vigil_env

from responder.tools.signals import load_signals
from vigil.demo import DEMO_DIR, alertmanager_config, prometheus_config
from vigil.shop import SHOP

DEMO_DEADLINE = 240.0  # seconds; the demo takes about one minute on an idle 2-core machine
BROKEN = "checkout"


@dataclass(frozen=True)
class Told:
    """A finished `vigil demo`: its exit code, its lines, and its data dir."""

    rc: int
    lines: list[str]
    err: str
    data: Path

    def sql(self, query: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [VIGIL, "sql", query, "--format", "json"], env=vigil_env(self.data),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Told:
    """One `vigil demo` to its end, its output a pipe (not a terminal), shared by the tests.
    As `make demo` runs it: no VIGIL_DATA_DIR, so the data dir is ./.vigil, a relative path."""
    where = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [VIGIL, "demo"], env=vigil_env(), cwd=where, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=DEMO_DEADLINE,
    )  # fmt: skip
    return Told(done.returncode, done.stdout.splitlines(), done.stderr, where / ".vigil")


def lines_with(told: Told, *needles: str) -> list[str]:
    return [line for line in told.lines if all(n in line for n in needles)]


@pytest.mark.slow
def test_the_demo_tells_what_the_pipeline_did(told: Told) -> None:
    assert told.rc == 0, (told.lines, told.err)
    # The deploys, as the demo recorded them (ChangeRecorded, read back from the stream).
    assert lines_with(told, "change   search: deploy 0.9.1 (was 0.9.0)", "ChangeRecorded")
    assert lines_with(told, "change   checkout: deploy 1.5.0 (was 1.4.0)", "ChangeRecorded")
    # Prometheus fired, Alertmanager notified, the webhook opened an incident.
    alerts = lines_with(told, f"alert    HighErrorRate firing on {BROKEN}: ", "5xx")
    assert alerts and "(AnomalyDetected from alertmanager, incident am-" in alerts[0]
    incident = re.search(r"incident (am-[0-9a-f]+)", alerts[0])
    assert incident is not None
    started = lines_with(told, f"investigation of {incident[1]} ({BROKEN}): attempt 1 with builtin")
    assert started
    # Each tool call starting and finishing with its duration.
    requested = lines_with(told, f"tool     {BROKEN}: ", "started [", "(ToolRequested)")
    finished = [
        line
        for line in told.lines
        if re.search(rf"tool     {BROKEN}: \w+ (completed in \d+ ms|failed after \d+ ms)", line)
    ]
    tools = {re.search(rf"{BROKEN}: (\w+) ", line)[1] for line in requested}  # type: ignore[index]
    assert {"service_signals", "recent_changes"} <= tools
    assert len(finished) == len(requested) >= 5
    # The ranked report with its evidence, then the queries to look deeper.
    (report,) = lines_with(told, f"report   {incident[1]} ({BROKEN}): ", "(RootCauseConcluded")
    after = told.lines[told.lines.index(report) + 1 :]
    assert re.match(r"    1\. \w+ of \S+, confidence \d\.\d\d: ", after[0]), after[0]
    assert after[1].startswith("       evidence: a1.t"), after[1]
    assert any('vigil sql "SELECT' in line and "FROM tool_calls" in line for line in told.lines)
    # Every line of the story is stamped with the seconds since the demo began.
    assert all(re.match(r"\+ *\d+\.\ds ", line) for line in told.lines[:4])


@pytest.mark.slow
def test_the_demo_leaves_its_incident_for_vigil_sql(told: Told) -> None:
    assert told.rc == 0, (told.lines, told.err)
    assert not (told.data / "runtime.json").exists()  # nothing running on it any more
    (incident,) = told.sql(
        f"SELECT incident_id, title, status, root_cause FROM incidents WHERE service = '{BROKEN}'"
    )
    assert incident["title"] == "HighErrorRate" and incident["status"] == "diagnosed"
    assert incident["root_cause"] is not None
    (anomaly,) = told.sql(
        "SELECT data->>'origin' AS origin, data->>'service' AS service FROM events "
        f"WHERE type = 'AnomalyDetected' AND incident_id = '{incident['incident_id']}'"
    )
    assert anomaly == {"origin": "alertmanager", "service": BROKEN}
    calls = told.sql(
        "SELECT tool_name, status, duration_ms FROM tool_calls "
        f"WHERE incident_id = '{incident['incident_id']}'"
    )
    assert len(calls) >= 5 and all(c["status"] == "completed" for c in calls), calls
    (investigation,) = told.sql(
        "SELECT status, top_category, top_service FROM investigations "
        f"WHERE incident_id = '{incident['incident_id']}'"
    )
    assert investigation["status"] == "concluded"
    changes = told.sql(
        "SELECT data->>'service' AS service, data->>'ref' AS ref FROM events "
        "WHERE type = 'ChangeRecorded' ORDER BY seq"
    )
    assert changes == [{"service": "search", "ref": "0.9.1"}, {"service": BROKEN, "ref": "1.5.0"}]


@pytest.mark.slow
def test_the_demo_report_blames_the_broken_deploy(told: Told) -> None:
    """What the demo is for: the top hypothesis is the deploy of the service it broke (the
    analyst reads a seconds-old alert: the onset from the rule's own expression, range
    queries at a step of seconds)."""
    assert told.rc == 0, (told.lines, told.err)
    (top,) = told.sql(
        "SELECT root_cause, root_cause_service FROM incidents "
        f"WHERE service = '{BROKEN}' AND title = 'HighErrorRate'"
    )
    assert top == {"root_cause": "deploy_or_config_change", "root_cause_service": BROKEN}


async def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        VIGIL, "demo", env=vigil_env(data), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())  # read to its end: the pipe never fills
    watched: list[Watched] = []
    try:
        lines = []
        async with asyncio.timeout(60):
            while not any("traffic  " in line for line in lines):  # everything has started
                raw = await proc.stdout.readline()
                assert raw, f"vigil demo ended early: {lines} {await errors}"
                lines.append(raw.decode())
        started = {c.pid: c for c in children(proc.pid)}
        programs = sorted(
            "projector" if cmdline(pid)[-2:-1] == ["projector"] else info.comm
            for pid, info in started.items()
        )
        assert programs == ["nats-server", "projector", "prometheus", "prometheus-aler"]
        watched = [Watched(info) for info in started.values()]
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), 60)
        assert await asyncio.wait_for(proc.wait(), 60) == 130
        assert "demo interrupted: everything it started is stopped" in rest.decode()
        for w in watched:  # each child is gone, by its pid
            await w.wait_exit(timeout=5)
        assert not children(proc.pid)
        said = (await errors).decode()
        assert "Traceback" not in said and "ERROR" not in said, said
        # The data dir is free again: another demo (or vigil up) can take it.
        assert not (data / "runtime.json").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for w in watched:
            if not w.exited():
                w.kill()
            w.close()
        errors.cancel()


async def test_the_demo_refuses_a_data_dir_that_is_not_a_demos(tmp_path: Path) -> None:
    """The demo replaces what an earlier demo left, never a real Vigil's data."""
    data = tmp_path / "data"
    (data / "nats").mkdir(parents=True)
    done = await run_vigil("demo", env=vigil_env(data))
    assert done.rc == 2, done
    assert done.err.strip() == (
        f"vigil: data dir {data} holds a Vigil's data (nats) that is not a demo's: set "
        "VIGIL_DATA_DIR to another directory"
    )
    assert (data / "nats").is_dir()


def test_the_servers_configs_are_valid_to_the_servers_own_checkers(tmp_path: Path) -> None:
    """The Prometheus config (with the demo's alert rules) and the Alertmanager config the
    demo writes, checked by promtool and amtool (Debian's, as the demo runs them)."""
    token = tmp_path / "vigil-token"
    token.write_text("t")
    targets = {"frontend": "127.0.0.1:1", "checkout": "127.0.0.1:2"}
    checks = [
        ("prometheus.yml", prometheus_config(targets, 3), ["promtool", "check", "config"]),
        (
            "alertmanager.yml",
            alertmanager_config("http://127.0.0.1:4/webhooks/alertmanager", token),
            ["amtool", "check-config"],
        ),
    ]
    for name, config, argv in checks:
        (tmp_path / name).write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [*argv, str(tmp_path / name)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
    rules = subprocess.run(
        ["promtool", "check", "rules", str(DEMO_DIR / "alerts.yml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "SUCCESS: 1 rules found" in rules.stdout, rules.stdout + rules.stderr


def test_the_demo_signals_and_topology_load_as_the_tools_read_them() -> None:
    signals = load_signals(DEMO_DIR / "signals.yaml")
    assert set(signals) == {"traffic", "errors", "latency_p99", "up"}
    assert all("[5m]" not in template for template in signals.values())
    topology = yaml.safe_load((DEMO_DIR / "topology.yaml").read_text())
    calls = {s["name"]: sorted(s["depends_on"]) for s in topology["services"]}
    assert calls == {spec.name: sorted(spec.calls) for spec in SHOP}  # the shop as it runs
