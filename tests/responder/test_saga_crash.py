"""kill -9 of a real `vigil saga` process at every step boundary of a 3-step saga whose third
step fails: a second process takes it up, and every run ends with the same events and the
same effects on the deployer (calls per idempotency key, versions) as a run with no crash."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from nats.js import JetStreamContext

from eventlog.history import incident_events
from eventlog.payloads import RemediationAction
from responder.saga.catalog import Catalog
from responder.saga.failpoints import BOUNDARIES
from responder.saga.policy import Policy, ServicePolicy
from responder.saga.proposals import propose
from tests.responder.running import anomaly, append
from tests.responder.saga_target import Deployer, catalog_for
from tests.responder.watching import Seen, seen
from tests.vigil.vigil_cli_support import VIGIL, vigil_env
from vigil.broker import EmbeddedNats

pytestmark = pytest.mark.slow
__all__ = ["seen"]  # a fixture

VERSIONS = {"checkout": "1.0", "payments": "2.0", "search": "3.0"}
PLAN = [
    RemediationAction(action="set_version", params={"service": s, "version": v})
    for s, v in (("checkout", "1.1"), ("payments", "2.1"), ("search", "3.1"))
]  # search refuses: the third step fails, the first two are compensated
PASSES = {  # how many times a saga of PLAN passes each boundary
    "saga.started": 1, "step.started": 3, "step.executed": 3, "step.recorded": 3,
    "compensation.started": 2, "compensation.executed": 2, "compensation.recorded": 2,
}  # fmt: skip
CRASHES = [f"{b}#{n}" for b in BOUNDARIES for n in range(1, PASSES[b] + 1)]

Outcome = tuple[list[str], dict[str, int], dict[str, str]]


@contextlib.asynccontextmanager
async def orchestrating(env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """`vigil saga` until the block ends (SIGTERM then: it stops as it would in production)."""
    proc = await asyncio.create_subprocess_exec(
        VIGIL, "saga", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def one_run(
    js: JetStreamContext,
    seen: Seen,
    env: dict[str, str],
    deployer: Deployer,
    catalog: Catalog,
    policy: Policy,
    incident: str,
    crash: str | None,
) -> Outcome:
    await append(js, anomaly("checkout"), incident)
    proposal = await propose(js, incident, PLAN, catalog=catalog, policy=policy, by="test")
    saga_id = proposal.saga_id
    if crash is not None:
        async with orchestrating({**env, "VIGIL_FAILPOINTS": crash}) as proc:
            code = await asyncio.wait_for(proc.wait(), 60)
            assert code == -signal.SIGKILL, f"{crash}: exit {code}, not killed there"
    async with orchestrating(env):
        await seen.first(lambda e: e.incident_id == incident and e.type == "SagaCompensated",
                         timeout=60)  # fmt: skip
    kinds = []
    for stored in await incident_events(js, incident):
        step = getattr(stored.event.data, "step", None)
        kinds.append(stored.event.type if step is None else f"{stored.event.type}({step})")
    calls = {k.replace(saga_id, "S"): n for k, n in deployer.calls.items() if saga_id in k}
    return kinds, calls, dict(deployer.versions)


async def test_killed_at_every_step_boundary_the_saga_ends_with_the_same_events_and_effects(
    nats_server: EmbeddedNats, js: JetStreamContext, seen: Seen, tmp_path: Path
) -> None:
    assert len(CRASHES) == 16
    auto = ServicePolicy(low="auto")
    policy = Policy(services={s: auto for s in VERSIONS}, max_per_service_per_hour=1000)
    deployer = Deployer(VERSIONS, failing={"search"})
    async with deployer.running():
        catalog_data = catalog_for(deployer.url)
        catalog = Catalog.model_validate(catalog_data)
        (tmp_path / "actions.yaml").write_text(yaml.safe_dump(catalog_data))
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy.model_dump()))
        # A dead orchestrator's saga is taken over once its 1 s lease has run out.
        env = vigil_env(tmp_path / "data", nats_url=nats_server.url,
                        actions=str(tmp_path / "actions.yaml"),
                        policy=str(tmp_path / "policy.yaml"), saga_lease_seconds="1")  # fmt: skip
        reference = await one_run(js, seen, env, deployer, catalog, policy, "inc-ref", None)
        kinds, calls, versions = reference
        assert kinds[-7:] == [
            "SagaStepStarted(2)", "SagaStepFailed(2)",
            "CompensationStarted(1)", "CompensationSucceeded(1)",
            "CompensationStarted(0)", "CompensationSucceeded(0)",
            "SagaCompensated",
        ]  # fmt: skip
        assert calls == {"S:0:1": 1, "S:1:1": 1, "S:2:1": 1, "S:0:undo:1": 1, "S:1:undo:1": 1}
        assert versions == VERSIONS
        for n, crash in enumerate(CRASHES):
            got = await one_run(js, seen, env, deployer, catalog, policy, f"inc-{n}", crash)
            assert got == reference, crash
