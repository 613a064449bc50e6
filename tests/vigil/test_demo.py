"""`vigil demo` as a user runs it, without a terminal: a real incident told from the stream,
its two acts of remediation (one verified and resolving the incident, one undone in reverse),
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

from responder.saga.catalog import load_catalog
from responder.saga.policy import load_policy
from responder.tools.signals import load_signals
from vigil.demo import DEMO_DIR, alertmanager_config, prometheus_config
from vigil.demo_acts import SHOP_ADMIN, write_catalog
from vigil.shop import SHOP

DEMO_DEADLINE = 300.0  # seconds; the demo takes about 90 s on an idle 2-core machine
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

    def saga(self, saga_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The saga's events in stream order, each as (type, data)."""
        rows = self.sql(
            f"SELECT type, data FROM events WHERE data->>'saga_id' = '{saga_id}' ORDER BY seq"
        )
        return [(r["type"], json.loads(r["data"])) for r in rows]

    def line(self, *needles: str) -> int:
        """The index of the one line with every needle."""
        (found,) = [i for i, line in enumerate(self.lines) if all(n in line for n in needles)]
        return found


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
    assert incident["title"] == "HighErrorRate" and incident["status"] == "resolved"
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
    assert changes == [
        {"service": "search", "ref": "0.9.1"},
        {"service": BROKEN, "ref": "1.5.0"},
        {"service": BROKEN, "ref": "1.5.1"},  # act two's release train
        {"service": "search", "ref": "0.9.2"},
    ]


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


@pytest.mark.slow
def test_act_one_rolls_the_broken_deploy_back_verifies_it_and_resolves_the_incident(
    told: Told,
) -> None:
    """The report's remedy, proposed by the orchestrator and run under the demo's `auto`
    policy: the shop's rollback, the error rate measured falling in Prometheus, resolved."""
    assert told.rc == 0, (told.lines, told.err)
    (incident,) = told.sql(
        f"SELECT incident_id, status, resolution FROM incidents WHERE service = '{BROKEN}'"
    )
    assert (incident["status"], incident["resolution"]) == ("resolved", "remediation")
    (proposed,) = told.sql(
        "SELECT data->>'saga_id' AS saga_id FROM events WHERE type = 'RemediationProposed' "
        f"AND incident_id = '{incident['incident_id']}'"
    )
    events = told.saga(proposed["saga_id"])
    kinds = [kind for kind, _ in events]
    measured = [data for kind, data in events if kind == "VerificationMeasured"]
    assert kinds == [
        "RemediationProposed", "SagaStarted", "SagaStepStarted", "SagaStepSucceeded",
        *["VerificationMeasured"] * len(measured), "VerificationPassed", "SagaCompleted",
    ]  # fmt: skip
    plan = events[0][1]
    assert plan["mode"] == "auto" and plan["steps"] == [
        {
            "action": "rollback_deploy",
            "params": {"service": BROKEN},
            "compensation": "deploy_version",
        }
    ]
    assert plan["rationale"].startswith("recommended by attempt 1's report: ")
    assert events[3][1]["output"] == {"service": BROKEN, "previous": "1.5.0", "now": "1.4.0"}
    # Measured in Prometheus: at most one measurement still sees the last failures.
    assert 1 <= len(measured) <= 4 and sum(not m["ok"] for m in measured) <= 1, measured
    assert measured[-1]["ok"] and measured[-1]["observed"] < 0.05
    assert 'http_requests_total{service="checkout"' in measured[0]["query"]
    (resolved,) = told.sql(
        "SELECT data->>'how' AS how FROM events WHERE type = 'IncidentResolved' "
        f"AND incident_id = '{incident['incident_id']}'"
    )
    assert resolved == {"how": "remediation"}
    # Told live, in the order it happened.
    tag = f"{BROKEN}: "
    order = [
        told.line(f"remedy   {tag}rollback_deploy {{\"service\":\"{BROKEN}\"}} proposed, mode "
                  "auto, low risk, recommended by attempt 1's report", "(RemediationProposed)"),
        told.line(f"saga     {tag}started: 1 step on {BROKEN}", "(SagaStarted)"),
        told.line(f"step     {tag}1/1 rollback_deploy ", "started, idempotency key saga-"),
        told.line(f"step     {tag}1/1 rollback_deploy succeeded: {{\"service\":\"{BROKEN}\","
                  '"previous":"1.5.0","now":"1.4.0"} (SagaStepSucceeded)'),
        told.line(f"verify   {tag}measurement 1/4: ", " `result < 0.05` (VerificationMeasured)"),
        told.line(f"verify   {tag}passed: ", "(VerificationPassed)"),
        told.line(f"saga     {tag}completed [{proposed['saga_id']}] (SagaCompleted)"),
        told.line(f"resolved {incident['incident_id']} ({BROKEN}): remediation by vigil "
                  "(IncidentResolved)"),
    ]  # fmt: skip
    assert order == sorted(order)


@pytest.mark.slow
def test_act_two_undoes_a_plan_that_does_not_help_in_reverse(told: Told) -> None:
    """The on-call's plan on the frontend's new incident (a config broke it): both deploys
    carried out, the alert's expression still holding, both undone in reverse."""
    assert told.rc == 0, (told.lines, told.err)
    (proposed,) = told.sql(
        "SELECT incident_id, data->>'saga_id' AS saga_id FROM events WHERE type = "
        "'RemediationProposed' AND data->>'rationale' LIKE 'proposed by the on-call: %'"
    )
    (incident,) = told.sql(
        f"SELECT service, status FROM incidents WHERE incident_id = '{proposed['incident_id']}'"
    )
    assert incident["service"] == "frontend" and incident["status"] != "resolved"
    events = told.saga(proposed["saga_id"])
    assert [kind for kind, _ in events] == [
        "RemediationProposed", "SagaStarted",
        "SagaStepStarted", "SagaStepSucceeded", "SagaStepStarted", "SagaStepSucceeded",
        "VerificationMeasured", "VerificationMeasured", "VerificationFailed",
        "CompensationStarted", "CompensationSucceeded", "CompensationStarted",
        "CompensationSucceeded", "SagaCompensated",
    ]  # fmt: skip
    of = {kind: [d for k, d in events if k == kind] for kind, _ in events}
    assert [d["output"] for d in of["SagaStepSucceeded"]] == [
        {"service": "checkout", "previous": "1.5.1", "now": "1.4.0"},
        {"service": "search", "previous": "0.9.2", "now": "0.9.1"},
    ]
    # Measured with the alert's own expression: the frontend still fails.
    assert all(not m["ok"] and m["observed"] > 0.05 for m in of["VerificationMeasured"])
    assert "> 0.05" in of["VerificationMeasured"][0]["query"]
    # Undone in reverse, each with the version its step replaced.
    assert [(d["step"], d["action"], d["params"]) for d in of["CompensationStarted"]] == [
        (1, "deploy_version", {"service": "search", "version": "0.9.2"}),
        (0, "deploy_version", {"service": "checkout", "version": "1.5.1"}),
    ]
    assert of["SagaCompensated"][0]["reason"].startswith("verification failed: ")
    steps = told.sql(
        f"SELECT step, status FROM saga_steps WHERE saga_id = '{proposed['saga_id']}' ORDER BY step"
    )
    assert steps == [{"step": 0, "status": "compensated"}, {"step": 1, "status": "compensated"}]
    # Told live, in order; and the shop, asked at the end, runs the versions of before the plan.
    order = [
        told.line("config   frontend: dependency timeout 2 s -> 10 ms, set by hand"),
        told.line("on-call  frontend fails since checkout 1.5.1 and search 0.9.2 shipped"),
        told.line("remedy   frontend: deploy_version ", "proposed, mode auto, medium risk, "
                  "proposed by the on-call", "(RemediationProposed)"),
        told.line("saga     frontend: started: 2 steps on checkout, search"),
        told.line("step     frontend: 2/2 deploy_version succeeded: "),
        told.line("verify   frontend: measurement 2/3: ", "fails `empty` (VerificationMeasured)"),
        told.line("verify   frontend: failed: 2 of 2 measurements failed empty"),
        told.line("undo     frontend: step 2/2 undone by deploy_version "
                  '{"service":"search","version":"0.9.2"}', "(CompensationStarted)"),
        told.line("undo     frontend: step 1/2 undone by deploy_version "
                  '{"service":"checkout","version":"1.5.1"}', "(CompensationStarted)"),
        told.line("saga     frontend: compensated, every step undone: verification failed: "),
        told.line("shop     runs frontend 3.2.0, checkout 1.5.1, payments 2.7.1, search 0.9.2 "),
    ]  # fmt: skip
    assert order == sorted(order)


@pytest.mark.slow
def test_only_the_two_acts_remediate(told: Told) -> None:
    """Two sagas ran; any other plan was the report's remedy for an upstream incident, which
    the catalog's scope refuses (a rollback only of the incident's own service)."""
    assert told.rc == 0, (told.lines, told.err)
    started = told.sql("SELECT incident_id FROM events WHERE type = 'SagaStarted'")
    assert len(started) == 2
    refused = told.sql(
        "SELECT i.service, e.data->>'reason' AS reason FROM events e JOIN incidents i "
        "USING (incident_id) WHERE e.type = 'RemediationRejected'"
    )
    for r in refused:
        assert r["service"] == "frontend", refused
        assert "is outside the incident's service (frontend)" in r["reason"], refused


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


def test_the_demo_catalog_and_policy_load_and_reach_the_running_shop(tmp_path: Path) -> None:
    """What the saga role loads: the committed catalog, written with the shop's address, every
    executor URL on it; the policy lets the demo's low and medium risk plans run."""
    written = write_catalog(
        DEMO_DIR / "actions.yaml", tmp_path / "actions.yaml", "http://127.0.0.1:5"
    )
    catalog = load_catalog(written)
    assert load_catalog(DEMO_DIR / "actions.yaml").actions  # the sample is valid as it is
    urls = [u for a in catalog.actions for u in (a.executor.url, a.executor.outcome_url)]  # type: ignore[union-attr]
    assert all(u.startswith("http://127.0.0.1:5/services/{service}/admin/") for u in urls)
    assert SHOP_ADMIN not in written.read_text()
    rollback = catalog.get("rollback_deploy")
    assert rollback is not None and rollback.remedies == ["deploy_or_config_change"]
    policy = load_policy(DEMO_DIR / "policy.yaml")
    for spec in SHOP:
        assert policy.mode_for(spec.name, "low") == policy.mode_for(spec.name, "medium") == "auto"


def test_the_demo_signals_and_topology_load_as_the_tools_read_them() -> None:
    signals = load_signals(DEMO_DIR / "signals.yaml")
    assert set(signals) == {"traffic", "errors", "latency_p99", "up"}
    assert all("[5m]" not in template for template in signals.values())
    topology = yaml.safe_load((DEMO_DIR / "topology.yaml").read_text())
    calls = {s["name"]: sorted(s["depends_on"]) for s in topology["services"]}
    assert calls == {spec.name: sorted(spec.calls) for spec in SHOP}  # the shop as it runs
