"""`vigil eval`: scenarios replayed through the real pipeline, scored; a folder that cannot run
is named and the rest go on; the investigation sees nothing past the trigger's start."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml
from vigil_cli_support import VIGIL, ProcInfo, children, proc_info, run_vigil, vigil_env

from tests.detector.prometheus_server import openmetrics
from tests.responder import golden
from tests.responder.chat_server import ChatServer, tool_calls, tool_messages
from vigil.evaluation import ScenarioResult, summarize

ERRORS = ('sum(rate(http_requests_total{service="checkout",code=~"5.."}[5m])) / '
          'sum(rate(http_requests_total{service="checkout"}[5m])) > 0.05')  # fmt: skip
TRIGGER_MINUTE = 64  # golden's errors begin in the minute after its ONSET (60)


def write_scenario(root: Path, name: str, **replace: Any) -> Path:
    """golden's checkout (errors from minute 61, memory climbing all along) as a scenario: a
    deploy before the trigger and one after it, an alert over before it and one after it."""
    folder = root / name
    folder.mkdir(parents=True)
    files: dict[str, Any] = {
        "scenario.yaml": {"name": name, "start": golden.minute(0).isoformat(),
                          "duration_minutes": golden.MINUTES, "story": "ignored"},
        "alerts.yaml": [
            {"labels": {"alertname": "CheckoutErrors", "service": "checkout",
                        "severity": "critical"}, "annotations": {"summary": "5xx"},
             "starts_at_minute": TRIGGER_MINUTE, "ends_at_minute": None, "expr": ERRORS},
            {"labels": {"alertname": "PaymentsSlow", "service": "payments",
                        "severity": "warning"}, "starts_at_minute": 40, "ends_at_minute": 50},
            {"labels": {"alertname": "PaymentsDown", "service": "payments",
                        "severity": "critical"}, "starts_at_minute": 62, "ends_at_minute": 90},
            {"labels": {"alertname": "Later", "service": "payments", "severity": "warning"},
             "starts_at_minute": 80, "ends_at_minute": None},
        ],
        "changes.yaml": [
            {"at_minute": 55, "service": "checkout", "kind": "deploy", "description": "deploy",
             "version": "v2"},
            {"at_minute": 70, "service": "checkout", "kind": "config", "key": "pool",
             "value": 3},
        ],
        "topology.yaml": {"services": [
            {"name": "checkout", "depends_on": ["payments"], "owner": "shop", "runbook": "r"},
            {"name": "payments", "depends_on": [], "owner": "pay", "runbook": "r"}]},
        "expected.yaml": {"root_cause_category": "memory_leak",
                          "root_cause_service": "checkout"},
    }  # fmt: skip
    files.update(replace)
    for file, content in files.items():
        if content is not None:
            (folder / file).write_text(yaml.safe_dump(content))
    with gzip.open(folder / "metrics.om.gz", "wt") as packed:
        packed.write(openmetrics(golden.series()))
    return folder


def test_scores_and_the_brier_score() -> None:
    def result(name: str, hit1: bool, hit3: bool, confidence: float) -> ScenarioResult:
        return ScenarioResult(name, hit_top1=hit1, hit_top3=hit3, confidence=confidence,
                              hit_service=True)  # fmt: skip

    results = [
        result("right", True, True, 0.9),  # (0.9 - 1)^2 = 0.01
        result("humble", False, True, 0.3),  # 0.09
        result("confident", False, False, 0.8),  # 0.64
        ScenarioResult("broken", error="alerts.yaml is missing"),  # a miss, no Brier term
    ]
    summary = summarize(results, "builtin")
    assert {k: summary[k] for k in ("scenarios", "ran", "failed", "top1", "top3")} == {
        "scenarios": 4, "ran": 3, "failed": 1, "top1": 1, "top3": 2
    }  # fmt: skip
    assert summary["brier"] == pytest.approx((0.01 + 0.09 + 0.64) / 3, abs=1e-4)
    assert summarize([], "builtin")["brier"] is None


@pytest.mark.slow
async def test_a_suite_with_folders_that_cannot_run_and_what_the_investigation_saw(
    tmp_path: Path,
) -> None:
    suite, keep = tmp_path / "suite", tmp_path / "keep"
    write_scenario(suite, "leak")
    write_scenario(suite, "no-expected", **{"expected.yaml": None})
    corrupt = write_scenario(suite, "bad-metrics")
    (corrupt / "metrics.om.gz").unlink()  # inside the window, but not OpenMetrics
    (corrupt / "metrics.om").write_text(f"checkout_up{{ 1 {golden.T0 + 60}\n# EOF\n")
    not_gzip = write_scenario(suite, "not-gzip")
    (not_gzip / "metrics.om.gz").write_text(openmetrics(golden.series()))
    (suite / "notes").mkdir()  # no scenario file: not a scenario, not an error

    done = await run_vigil("eval", str(suite), "--format", "json", "--keep", str(keep),
                           env=vigil_env(), timeout=180)  # fmt: skip
    assert done.rc == 1, done.err  # a scenario could not run: the suite is not whole
    summary = json.loads(done.out)
    by_name = {r["name"]: r for r in summary["results"]}
    assert list(by_name) == ["bad-metrics", "leak", "no-expected", "not-gzip"]
    assert by_name["no-expected"]["error"] == "no-expected: expected.yaml is missing"
    bad = by_name["bad-metrics"]["error"]
    assert bad.startswith("bad-metrics: metrics.om: promtool failed (exit 1): "), bad
    assert by_name["not-gzip"]["error"].startswith("not-gzip: metrics.om.gz: not a whole gzip")
    assert "Traceback" not in done.err
    leak = by_name["leak"]
    assert leak["error"] is None and leak["ranked"][0] == "memory_leak"
    assert (leak["hit_top1"], leak["hit_top3"], leak["hit_service"]) == (True, True, True)
    assert 0 < leak["confidence"] <= 1 and leak["tool_calls"] >= 6
    assert (summary["scenarios"], summary["ran"], summary["top1"]) == (4, 1, 1)
    assert summary["brier"] == pytest.approx((1 - leak["confidence"]) ** 2, abs=1e-4)

    # What the investigation was told, from the kept read model.
    now = golden.minute(TRIGGER_MINUTE)
    with duckdb.connect(str(keep / "leak" / "vigil" / "vigil.duckdb"), read_only=True) as db:
        rows = db.execute("SELECT tool_name, args, result FROM tool_calls").fetchall()
        started = db.execute("SELECT reason FROM investigations").fetchall()
    results = {name: json.loads(result) for name, _, result in rows}
    assert started == [("scenario leak",)]
    changes = results["recent_changes"]["changes"]
    assert [c["ref"] for c in changes] == ["v2"]  # pool=3 came after now
    firing = {a["name"] for g in results["related_alerts"]["groups"] for a in g["alerts"]}
    assert firing == {"CheckoutErrors", "PaymentsDown"}  # PaymentsSlow ended; Later not begun
    assert results["related_alerts"]["at"] == now.isoformat()
    for name, _, result in rows:
        if name in ("service_signals", "prometheus_range"):
            assert json.loads(result)["to"] == now.isoformat()  # never a sample past now
    (rule,) = [json.loads(r) for n, _, r in rows if n == "prometheus_range"]
    # Run again into the same --keep: its old stream would answer, so it is refused.
    again = await run_vigil("eval", str(suite / "leak"), "--keep", str(keep), env=vigil_env())
    assert again.rc == 2 and again.err_lines == [
        f"vigil: --keep {keep} holds leak from an earlier run: remove it, or keep this run "
        "elsewhere"
    ]
    since = datetime.fromisoformat(rule["series"][0]["since"])  # the errors' first minute
    assert 0 <= (since - golden.minute(golden.ONSET + 1)).total_seconds() <= rule["step_seconds"]


@pytest.mark.slow
async def test_the_built_in_analyst_meets_the_target_on_the_scenarios() -> None:
    """The issue's target, scaled to the suite: the true category first in 10 of 12, and in
    the top 3 for all but one."""
    suite = Path(__file__).parents[1] / "scenarios"
    done = await run_vigil("eval", str(suite), "--format", "json", env=vigil_env(),
                           timeout=600)  # fmt: skip
    assert done.rc == 0, done.err
    summary = json.loads(done.out)
    n = summary["scenarios"]
    misses = [(r["name"], r["expected"], r["ranked"]) for r in summary["results"]
              if not r["hit_top1"]]  # fmt: skip
    assert n >= 12 and summary["failed"] == 0
    assert summary["top1"] >= math.ceil(n * 10 / 12), misses
    assert summary["top3"] >= n - 1, misses
    assert summary["brier"] < 0.25  # better than always answering 0.5


def _blame_the_change(body: dict[str, Any]) -> dict[str, Any]:
    """An LLM's second answer: it reads the changes it was sent and blames the first."""
    told = orjson.loads(tool_messages(body)["call_changes"])
    change = told["changes"][0]
    report = {
        "summary": f"{change['ref']} of {change['service']} broke it",
        "hypotheses": [
            {"category": "deploy_or_config_change", "service": change["service"],
             "confidence": 0.8, "explanation": f"{change['ref']} shortly before",
             "evidence": ["call_changes"]}],
        "ruled_out": [], "gaps": [],
    }  # fmt: skip
    return tool_calls(("call_final", "final_result", report))


@pytest.mark.slow
async def test_the_same_suite_judges_an_llm(tmp_path: Path) -> None:
    """--model: an OpenAI-compatible model on loopback (the provider is the one service faked)
    investigates the scenario; it is told only what happened before the trigger."""
    write_scenario(
        tmp_path,
        "deploy",
        **{
            "expected.yaml": {
                "root_cause_category": "deploy_or_config_change",
                "root_cause_service": "checkout",
            }
        },
    )
    ask = tool_calls(("call_changes", "recent_changes", {"hours": 3}))  # fmt: skip
    chat = ChatServer([lambda body: ask, _blame_the_change])
    async with chat.running():
        env = vigil_env(model_base_url=chat.url, model_api_key="sk-test")
        done = await run_vigil("eval", str(tmp_path / "deploy"), "--format", "json",
                               "--model", "openai:gpt-4o-mini", env=env, timeout=120)  # fmt: skip
    assert done.rc == 0, done.err
    summary = json.loads(done.out)
    (result,) = summary["results"]
    assert summary["model"] == "openai:gpt-4o-mini" and len(chat.requests) == 2
    assert result["ranked"] == ["deploy_or_config_change"] and result["hit_top1"]
    assert result["summary"] == "v2 of checkout broke it"  # pool=3 came after now: not told
    assert summary["brier"] == pytest.approx(0.04)  # (0.8 - 1)^2


async def test_a_model_string_pydantic_ai_does_not_know_is_one_line(tmp_path: Path) -> None:
    write_scenario(tmp_path, "leak")
    done = await run_vigil("eval", str(tmp_path), "--model", "nonsense:model", env=vigil_env())
    assert done.rc == 2 and len(done.err_lines) == 1, done.err
    assert done.err.startswith("vigil: --model 'nonsense:model': "), done.err


async def _servers_of(pid: int) -> list[ProcInfo]:
    """The Prometheus and nats-server children of `pid` once both run (no event tells when a
    child starts: /proc is looked at until it shows them)."""
    async with asyncio.timeout(60):
        while True:
            found = [c for c in children(pid) if c.comm in ("prometheus", "nats-server")]
            if len(found) == 2:
                return found
            await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_sigterm_stops_every_server_and_leaves_no_temporary_data(tmp_path: Path) -> None:
    suite = Path(__file__).parents[1] / "scenarios"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = vigil_env() | {"TMPDIR": str(temp)}
    proc = await asyncio.create_subprocess_exec(
        VIGIL, "eval", str(suite), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 120)  # one scenario done
    assert first.decode().startswith("checkout-bad-deploy: "), first
    servers = await _servers_of(proc.pid)  # the next scenario's, mid-run
    assert list(temp.glob("vigil-eval-*"))
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not list(temp.glob("vigil-eval-*"))
    for server in servers:  # gone, or at most a zombie no one reaped yet
        info = proc_info(server.pid)
        assert info is None or info.start_time != server.start_time or info.state == "Z"
