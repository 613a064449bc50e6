"""Two orchestrators on one saga: the lease keeps it to one, and a dead holder's saga is taken
over once its term is over, on a real nats-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from eventlog.history import incident_events
from responder.saga.catalog import Catalog
from responder.saga.lease import Held, Leases, lease_bucket
from responder.saga.orchestrator import BUSY, Orchestrator, Timing
from tests.responder.running import anomaly, append
from tests.responder.saga_target import Deployer, catalog_for
from tests.responder.test_saga_orchestrator import POLICY, QUICK, THREE, deployer, proposed

__all__ = ["deployer"]  # a fixture


async def two(js: JetStreamContext, url: str, **clocks: object) -> list[Orchestrator]:
    kv = await lease_bucket(js)
    catalog = Catalog.model_validate(catalog_for(url, verify=QUICK))
    return [
        Orchestrator(js, catalog, POLICY, timing=Timing(backoff=0.01),
                     leases=Leases(kv, term=2.0, owner=name, **clocks.get(name, {})))  # type: ignore[arg-type]
        for name in ("a", "b")
    ]  # fmt: skip


async def test_while_one_orchestrator_runs_a_step_the_other_leaves_the_saga_alone(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    a, b = await two(js, deployer.url)
    saga_id = await proposed(js, a, THREE[:2])
    deployer.hold = asyncio.Event()
    running = asyncio.create_task(a.advance("inc-1"))
    await deployer.arrived.wait()  # a's step 0 is at the deployer, not yet answered
    # Without the lease, b would find step 0 started and unanswered, ask the deployer (which
    # has not carried it out yet: 404) and run it a second time.
    assert await b.advance("inc-1") == {saga_id: BUSY}
    deployer.hold.set()
    assert await asyncio.wait_for(running, 20) == {}
    assert await b.advance("inc-1") == {}
    assert sorted(deployer.calls.values()) == [1, 1, 1, 1]  # two steps, two undos: once each
    types = [s.event.type for s in await incident_events(js, "inc-1")]
    assert types.count("SagaStepStarted") == 2 and types[-1] == "SagaCompensated"


async def test_a_dead_holders_saga_is_taken_over_when_its_term_is_over(
    js: JetStreamContext, deployer: Deployer
) -> None:
    await append(js, anomaly("checkout"))
    later = datetime.now(UTC) + timedelta(seconds=3)  # past a's 2 s term
    a, b = await two(js, deployer.url, b={"clock": lambda: later})
    saga_id = await proposed(js, a, THREE[:1])
    assert a.leases is not None and await a.leases.acquire(f"saga.{saga_id}")  # then "dies"
    now = Orchestrator(js, a.catalog, POLICY, leases=Leases(a.leases.kv, term=2.0, owner="c"))
    assert await now.advance("inc-1") == {saga_id: BUSY}  # c's clock: a's term is not over
    assert await b.advance("inc-1") == {}  # b's clock: it is
    assert list(deployer.calls.values()) == [1, 1]  # the step, and its undo (no alert resolved)


async def test_a_holder_that_stalled_past_its_term_learns_it_lost_and_leaves_the_new_holder_be(
    js: JetStreamContext,
) -> None:
    kv = await lease_bucket(js)
    a = Leases(kv, term=0.3, owner="a")
    b = Leases(kv, term=60, owner="b", clock=lambda: datetime.now(UTC) + timedelta(seconds=1))
    async with a.holding("saga.s1") as lost:
        assert lost is not None and not lost.is_set()
        assert await b.acquire("saga.s1") is not None  # b's clock: a's term is over
        await asyncio.wait_for(lost.wait(), 5)  # a's next renewal finds it gone
    held = Held.model_validate_json((await kv.get("saga.s1")).value or b"")
    assert held.owner == "b"  # a, leaving, did not give back what was no longer its own
    async with a.holding("saga.s1") as refused:
        assert refused is None
