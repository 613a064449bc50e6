"""The timeline page in a real headless chromium against the real API, NATS and roles: an
incident investigated while the page is open shows up live, an Approve click records the
approval and the page follows the saga to its end; a read token sees no buttons; an evidence
id leads to its tool call; text from events is shown as text."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from playwright.async_api import Browser, expect

from api.auth import ApiToken
from eventlog.envelope import Event, new_event
from eventlog.payloads import (
    AgentStep,
    AnomalyDetected,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    Hypothesis,
    IncidentAcknowledged,
    InvestigationStarted,
    NotificationSent,
    RemediationAction,
    RemediationApproved,
    RemediationProposed,
    RootCauseConcluded,
    SagaCompensated,
    SagaStarted,
    SagaStepFailed,
    SagaStepStarted,
    SagaStepSucceeded,
    ToolCompleted,
    ToolRequested,
)
from eventlog.payloads.investigation import RootCauseReport, RuledOut
from eventlog.publisher import EventPublisher
from responder.tools import ToolSettings, default_tools
from tests.api.timeline_site import (
    OPERATE,
    READ,
    Tab,
    api_served,
    chromium,
    listening,
    orchestrating,
    read_model,
    secret,
)
from tests.detector.prometheus_server import PrometheusServer
from tests.responder import golden
from tests.responder.conftest import golden_prometheus
from tests.responder.running import anomaly, append, responder, watching
from tests.responder.saga_target import Deployer
from tests.responder.tool_workers import workers

__all__ = ["golden_prometheus"]  # a fixture

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "timeline.png"
PROMETHEUS = "http://prometheus.example:9090"
HOSTILE = '<img src=x onerror="document.body.dataset.owned=1">'
expect.set_options(timeout=20_000)  # a CPU hog beside the test slows chromium down


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless."""
    async with chromium() as b:
        yield b


@pytest.mark.slow
async def test_an_incident_investigated_while_the_page_is_open_is_followed_and_approved(
    nc: NATS, js: JetStreamContext, db_path: Path, golden_prometheus: PrometheusServer,
    browser: Browser,
) -> None:  # fmt: skip
    registry = default_tools()
    tools = ToolSettings(prometheus_url=golden_prometheus.url)
    now, onset = golden.minute(golden.NOW), golden.minute(golden.ONSET)
    deployer = Deployer({"checkout": "1.0"})
    async with (
        deployer.running(),
        read_model(nc, db_path),
        orchestrating(js, deployer),
        # the investigator alone: its tool calls wait for workers, started below
        responder(js, registry, workers=0, settings=tools, now_of=lambda _: now),
        api_served(nc, tokens=[OPERATE, READ], prometheus_url=golden_prometheus.url) as url,
        watching(js) as watch,
    ):
        # The workers' durable consumer takes only requests made after it exists: made now,
        # the requests wait for the workers started below (as for a restarted worker).
        stop_workers, working = await workers(nc, registry, tools)
        stop_workers.set()
        await working
        tab = await Tab.open(browser, url + "/")
        page = tab.page
        await tab.give_token(OPERATE)
        await expect(page.locator("#who")).to_have_text("alice · operate")
        await expect(page.locator("#incidents-empty")).to_be_visible()
        await expect(page.locator("#connection")).to_have_text("live")

        await append(js, anomaly(starts_at=onset), "inc-live")  # the page is open already
        row = page.locator('[data-incident="inc-live"]')
        await expect(row).to_contain_text("checkout")
        await expect(row).to_contain_text("critical")
        await row.get_by_role("link").click()
        await expect(page).to_have_url(re.compile(r"/\?incident=inc-live$"))
        await expect(page.locator("#detail-title")).to_have_text("HighErrorRate on checkout")
        # The investigator asked for its tools; with no worker yet they are shown running.
        await expect(page.locator(".event-tool .chip-running").first).to_be_visible()
        await expect(row).to_contain_text("investigating")

        stop_workers, working = await workers(nc, registry, tools)
        try:
            report = page.locator(".event-report")
            await expect(report).to_be_visible(timeout=40_000)
            await watch.until(lambda: watch.of("inc-live", "RemediationProposed"), timeout=40)
            [concluded] = watch.of("inc-live", "RootCauseConcluded")
            [proposed] = watch.of("inc-live", "RemediationProposed")
            calls = watch.of("inc-live", "ToolRequested")
            assert isinstance(concluded.data, RootCauseConcluded)
            assert isinstance(proposed.data, RemediationProposed)
            top = concluded.data.report.hypotheses[0]

            # Every tool call came live, each with its outcome; the report, ranked.
            await expect(page.locator(".event-tool")).to_have_count(len(calls))
            await expect(page.locator(".event-tool .chip-running")).to_have_count(0)
            await expect(report.locator(".hypothesis")).to_have_count(
                len(concluded.data.report.hypotheses)
            )
            first = report.locator(".hypothesis").first
            await expect(first.locator(".confidence")).to_have_text(f"{top.confidence:.0%}")
            await expect(first.locator(".evidence-id")).to_have_text(top.evidence)
            await expect(page.locator(".event-step")).to_have_count(
                len(watch.of("inc-live", "AgentStep"))
            )
            await expect(row).to_contain_text(top.category.replace("_", " "))

            saga_id = proposed.data.saga_id
            banner = page.locator(f'.banner[data-saga="{saga_id}"]')
            await expect(banner).to_contain_text("Awaiting approval")
            if os.environ.get("VIGIL_SCREENSHOT"):
                await screenshot(tab)
            await banner.get_by_role("button", name="Approve").click()
            await watch.until(lambda: watch.of("inc-live", "SagaCompleted"), timeout=30)
        finally:
            stop_workers.set()
            await working

        [approved] = watch.of("inc-live", "RemediationApproved")
        assert isinstance(approved.data, RemediationApproved)
        assert (approved.data.saga_id, approved.data.by) == (saga_id, "alice")
        saga = page.locator(f"#saga-{saga_id}")
        await expect(saga.locator(".saga-status")).to_have_text("completed")
        await expect(saga.locator(".step-status")).to_have_text(["completed"])
        await expect(saga.locator(".decided")).to_have_text("Approved by alice")
        lines = page.locator(".event-saga-event h3")
        await expect(lines.filter(has_text="Step 0 (note) running")).to_have_count(1)
        await expect(lines.filter(has_text="Step 0 (note) completed")).to_have_count(1)
        await expect(page.locator(".banner")).to_have_count(0)
        await expect(row).to_contain_text("resolved")
        assert tab.errors == []
        await tab.close()


async def screenshot(tab: Tab) -> None:
    """docs/timeline.png, 1280 wide: from the top of the page (the list, the incident, the
    approval banner) down to the plan the report led to. The committed one went through
    `pngquant --quality=70-90` (a third of the size)."""
    page = tab.page
    bottom = await page.locator(".event-saga").evaluate(
        "node => node.getBoundingClientRect().bottom + window.scrollY + 16"
    )
    await page.evaluate("window.scrollTo(0, 0)")
    clip = {"x": 0, "y": 0, "width": 1280, "height": bottom}
    await page.screenshot(path=str(SCREENSHOT), type="png", full_page=True, clip=clip)  # type: ignore[arg-type]


async def publish(js: JetStreamContext, incident: str, *facts: object) -> list[Event]:
    at = datetime.now(UTC) - timedelta(minutes=12)
    events = []
    for i, data in enumerate(facts):
        event = new_event(data, incident_id=incident, source="test")  # type: ignore[arg-type]
        events.append(event.model_copy(update={"occurred_at": at + timedelta(seconds=10 * i)}))
    await EventPublisher(js).publish_many(events)
    return events


PROMQL = 'sum(rate(http_requests_total{service="checkout",code=~"5.."}[5m]))'


def diagnosed_story() -> list[object]:
    """An alert (with markup in its annotation), 24 tool calls, a model step, a report whose
    top hypothesis cites the first call, and a plan awaiting approval."""
    started = datetime.now(UTC) - timedelta(minutes=15)
    calls: list[object] = []
    for i in range(24):
        name, args = ("prometheus_query", {"query": PROMQL}) if i == 0 else (
            "service_signals", {"service": f"svc-{i}"})  # fmt: skip
        calls.append(ToolRequested(tool_call_id=f"tc-{i:02d}", tool_name=name, args=args))
        result = {"value": i, "series": [1, 2]}
        calls.append(ToolCompleted(tool_call_id=f"tc-{i:02d}", tool_name=name, result=result,
                                   duration_ms=12.0 + i))  # fmt: skip
    top = Hypothesis(category="deploy_or_config_change", service="checkout", confidence=0.82,
                     explanation="5xx from 1% to 20% eight minutes after v2.14",
                     evidence=["tc-00"])  # fmt: skip
    second = Hypothesis(category="memory_leak", service="checkout", confidence=0.35,
                        explanation="memory climbs 1 MiB a minute", evidence=["tc-05"])  # fmt: skip
    report = RootCauseReport(
        summary="a bad deploy of checkout", hypotheses=[top, second],
        ruled_out=[RuledOut(what="payments", reason="healthy", evidence=["tc-07"])],
        gaps=["no topology file"],
    )  # fmt: skip
    said = {"parts": [{"part_kind": "text", "content": "Looking at 5xx."}]}
    step = AgentStep(attempt=1, step=0, turn=0, model="builtin", request={}, response=said,
                     duration_ms=3.0)  # fmt: skip
    plan = RemediationProposed(
        saga_id="saga-page", mode="approval", risk="low", by="responder",
        steps=[RemediationAction(action="note", params={"service": "checkout"})],
        rationale="recommended by attempt 1's report",
    )  # fmt: skip
    alert = AnomalyDetected(origin="alertmanager", name="HighErrorRate", fingerprint="f1",
                            starts_at=started, service="checkout", severity="critical",
                            annotations={"summary": HOSTILE})  # fmt: skip
    return [
        alert,
        InvestigationStarted(model="builtin"),
        step,
        *calls,
        RootCauseConcluded(attempt=1, model="builtin", report=report, tool_calls=24),
        plan,
    ]


async def test_a_read_token_sees_the_plan_but_no_buttons_and_evidence_leads_to_its_call(
    nc: NATS, js: JetStreamContext, db_path: Path, browser: Browser
) -> None:
    await publish(js, "inc-page", *diagnosed_story())
    async with (
        read_model(nc, db_path),
        api_served(nc, tokens=[OPERATE, READ], prometheus_url=PROMETHEUS) as url,
    ):
        reader = await Tab.open(browser, f"{url}/?incident=inc-page")
        await reader.give_token(READ)
        page = reader.page
        await expect(page.locator("#who")).to_have_text("rita · read")
        banner = page.locator('.banner[data-saga="saga-page"]')
        await expect(banner).to_contain_text("Awaiting approval")
        await expect(banner).to_contain_text("Plan saga-page: note service: checkout")
        await expect(banner).to_contain_text("An operate token may approve or reject it.")
        await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        await expect(page.get_by_role("button", name="Reject")).to_have_count(0)
        await expect(page.locator('[data-incident="inc-page"]')).to_contain_text(
            "deploy or config change of checkout (82%)"
        )

        # The first call is far above the report: its evidence id brings it into view.
        call = page.locator("#call-tc-00")
        evidence = page.locator(".hypothesis").first.get_by_role("button", name="tc-00")
        await evidence.scroll_into_view_if_needed()
        await expect(call).not_to_be_in_viewport()
        await evidence.click()
        await expect(call).to_be_in_viewport()
        await expect(call).to_have_class(re.compile(r"\bhighlighted\b"))
        await expect(call).to_be_focused()
        await expect(page.locator(".highlighted")).to_have_count(1)

        # PromQL links to Prometheus's graph; text from events is text, never markup.
        link = call.get_by_role("link")
        href = urlsplit(await link.get_attribute("href") or "")
        assert f"{href.scheme}://{href.netloc}{href.path}" == f"{PROMETHEUS}/graph"
        assert parse_qs(href.query) == {"g0.expr": [PROMQL], "g0.tab": ["0"]}
        await expect(link).to_have_text(PROMQL)
        await expect(page.locator(".event-alert")).to_contain_text(HOSTILE)
        assert await page.locator(".event-alert img").count() == 0
        assert await page.evaluate("document.body.dataset.owned") is None
        assert reader.errors == []

        # The same incident with an operate token: the buttons are there.
        operator = await Tab.open(browser, f"{url}/?incident=inc-page")
        await operator.give_token(OPERATE)
        await expect(operator.page.get_by_role("button", name="Approve")).to_be_visible()
        await expect(operator.page.get_by_role("button", name="Reject")).to_be_visible()
        assert operator.errors == []
        await reader.close()
        await operator.close()


async def test_the_page_is_served_without_a_token_and_its_config_with_one(nc: NATS) -> None:
    async with (
        api_served(nc, tokens=[READ], prometheus_url=PROMETHEUS + "/") as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        page = await client.get("/")
        script = await client.get("/static/app.js")
        style = await client.get("/static/style.css")
        anonymous = await client.get("/api/v1/config")
        config = await client.get(
            "/api/v1/config", headers={"Authorization": f"Bearer {secret(READ)}"}
        )
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/app.js"></script>' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    scripts = [p.read_text() for p in (ROOT / "api" / "static").glob("*.js")]
    assert scripts and all("innerHTML" not in s for s in scripts)  # text goes in as text only
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert anonymous.status_code == 401
    assert config.json() == {"prometheus_url": PROMETHEUS, "base_url": "http://127.0.0.1:8080"}


async def test_the_page_resumes_its_streams_after_the_api_restarts_and_shows_each_event_once(
    nc: NATS, js: JetStreamContext, db_path: Path, browser: Browser
) -> None:
    story = diagnosed_story()  # no token configured: the page is a loopback client
    await publish(js, "inc-back", *story[:2])
    sock = listening()  # kept across the restart, as `vigil up` keeps its API's
    try:
        async with read_model(nc, db_path):
            async with api_served(nc, sock=sock) as url:
                tab = await Tab.open(browser, f"{url}/?incident=inc-back")
                page = tab.page
                await expect(page.locator("#who")).to_have_text("local · operate")
                await expect(page.locator(".event")).to_have_count(2)
                await expect(page.locator("#connection")).to_have_text("live")
            await expect(page.locator("#connection")).to_have_text("reconnecting…")
            await publish(js, "inc-back", *story[2:])  # while the API is down
            async with api_served(nc, sock=sock):
                await expect(page.locator("#connection")).to_have_text("live")
                await expect(page.locator(".event-report")).to_have_count(1)
                await append(js, IncidentAcknowledged(by="bob"), "inc-back")
                await expect(page.locator(".event-person")).to_contain_text("Acknowledged by bob")
                # Each event once: the alert, the start, the step, 24 calls (their outcomes
                # shown on them), the report, the plan and the acknowledgement.
                await expect(page.locator(".event")).to_have_count(30)
                await expect(page.locator(".event-tool")).to_have_count(24)
                row = page.locator('[data-incident="inc-back"]')
                await expect(row).to_contain_text("deploy or config change of checkout")
                assert tab.errors == []
                await tab.close()
    finally:
        sock.close()


def undone_story() -> list[object]:
    """A plan of two steps whose second fails: the first is undone on the second try; a
    notification went out."""
    steps = [RemediationAction(action="set_version", params={"service": s, "version": "2"})
             for s in ("checkout", "search")]  # fmt: skip
    saga = "saga-undone"
    return [
        anomaly(starts_at=datetime.now(UTC) - timedelta(minutes=5)),
        NotificationSent(channel="slack", target="#incidents", milestone="opened"),
        RemediationProposed(saga_id=saga, steps=steps, mode="auto", by="ana"),
        SagaStarted(saga_id=saga, steps=steps, services=["checkout", "search"]),
        SagaStepStarted(
            saga_id=saga,
            step=0,
            action="set_version",
            params=steps[0].params,
            idempotency_key=f"{saga}:0:1",
        ),
        SagaStepSucceeded(saga_id=saga, step=0, action="set_version", output={"previous": "1"}),
        SagaStepStarted(
            saga_id=saga,
            step=1,
            action="set_version",
            params=steps[1].params,
            idempotency_key=f"{saga}:1:1",
        ),
        SagaStepFailed(saga_id=saga, step=1, action="set_version", error="422: health check"),
        CompensationStarted(saga_id=saga, step=0, action="set_version"),
        CompensationFailed(saga_id=saga, step=0, action="set_version", error="503: busy"),
        CompensationStarted(saga_id=saga, step=0, action="set_version"),
        CompensationSucceeded(saga_id=saga, step=0, action="set_version"),
        SagaCompensated(saga_id=saga, reason="step 1 failed: 422: health check"),
    ]


async def test_a_wrong_token_is_asked_again_and_an_undone_plan_shows_each_step_undone(
    nc: NATS, js: JetStreamContext, db_path: Path, browser: Browser
) -> None:
    await publish(js, "inc-undone", *undone_story())
    async with read_model(nc, db_path), api_served(nc, tokens=[OPERATE]) as url:
        tab = await Tab.open(browser, f"{url}/?incident=inc-undone")
        page = tab.page
        await tab.give_token(ApiToken.parse("mallory:operate:not-a-token-we-know-of"))
        dialog = page.get_by_role("dialog", name="API token")
        await expect(dialog).to_contain_text("this bearer token is not one of VIGIL_API_TOKENS")
        await tab.give_token(OPERATE)
        await expect(page.locator("#who")).to_have_text("alice · operate")
        saga = page.locator("#saga-saga-undone")
        await expect(saga.locator(".saga-status")).to_have_text("compensated")
        await expect(saga.locator(".step-status")).to_have_text(["compensated", "failed"])
        await expect(saga.locator(".saga-step").nth(1)).to_contain_text("422: health check")
        lines = page.locator(".event-saga-event h3")
        await expect(lines).to_have_text([
            "Saga saga-undone started",
            "Step 0 (set_version) running", "Step 0 (set_version) completed",
            "Step 1 (set_version) running", "Step 1 (set_version) failed",
            "Compensation of step 0 (set_version) compensating",
            "Compensation of step 0 (set_version) compensation failed",
            "Compensation of step 0 (set_version) compensating",
            "Compensation of step 0 (set_version) compensated",
            "Saga saga-undone undone",
        ])  # fmt: skip
        await expect(page.locator(".event-notice")).to_have_text(
            re.compile(r"Notified slack: opened\s*#incidents")
        )
        # The token is kept: a new page of the same browser asks for none.
        again = await tab.context.new_page()
        await again.goto(f"{url}/?incident=inc-undone")
        await expect(again.locator("#who")).to_have_text("alice · operate")
        await expect(again.get_by_role("dialog", name="API token")).to_be_hidden()
        assert tab.errors == []
        await tab.close()


def test_every_file_of_the_page_is_packaged() -> None:
    """`pip install` brings the page along: each file of api/static is package data."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api"]
    files = sorted(str(p.relative_to(ROOT / "api")) for p in (ROOT / "api" / "static").iterdir())
    assert {"static/app.js", "static/index.html", "static/style.css"} <= set(files)
    assert [f for f in files if not any(fnmatch(f, p) for p in patterns)] == []
