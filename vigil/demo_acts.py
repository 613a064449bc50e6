"""`vigil demo` after the report: two acts of remediation, each told from the stream.

Act one is Vigil's alone: the saga orchestrator proposes the catalog's remedy for the report's
top hypothesis (deploy/demo/actions.yaml: `rollback_deploy` remedies a deploy), the demo's
policy (deploy/demo/policy.yaml) lets it run on its own, it rolls the broken service back
through the shop's admin endpoint, watches its error rate fall in Prometheus, and resolves
the incident. The demo only waits for that to be told.

Act two shows a remediation that does not help, undone. A release train ships two healthy
versions, then the frontend's dependency timeout is set to 10 ms by hand (someone meant 10 s):
a config no pipeline records, which no deploy undoes. Paged, the on-call suspects the train
and proposes, as `vigil propose` would, to deploy again the versions from before it. Both
steps run; the alert's own expression still holds, so the verification fails and both are
undone in reverse. Then the on-call finds the config and sets it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from nats.js import JetStreamContext

from eventlog.payloads import RemediationAction
from responder.saga.proposals import propose
from vigil.app import remediation_config
from vigil.demo_story import DemoError, SagaTale, Story
from vigil.shop import DEPENDENCY_TIMEOUT, Shop

if TYPE_CHECKING:
    from vigil.demo import Demo

SHOP_ADMIN = "http://shop-admin.invalid"  # in deploy/demo/actions.yaml: the gateway's address
ACT_SECONDS = 90.0  # an act not over this long after it began: the demo failed
TRAIN = (("checkout", "1.5.1"), ("search", "0.9.2"))  # act two's release train: both healthy
MISCONFIGURED = "frontend"
BAD_TIMEOUT = 0.01  # seconds: shorter than any call to a dependency takes
ON_CALL = "the on-call"


def write_catalog(source: Path, path: Path, admin_url: str) -> Path:
    """The demo's catalog (`source`) at `path`, its URLs the running shop's admin gateway."""
    path.write_text(source.read_text().replace(SHOP_ADMIN, admin_url))
    return path


async def _told(demo: Demo, story: Story, told: Callable[[], bool], failed: str) -> None:
    """Returns once `told()` holds; DemoError (`failed`) if not within ACT_SECONDS."""
    try:
        await demo.until(asyncio.wait_for(story.until(told), ACT_SECONDS))
    except TimeoutError:
        raise DemoError(f"{failed} within {ACT_SECONDS:g} s") from None


async def act_one(demo: Demo, story: Story, service: str) -> None:
    """The remediation the report of `service`'s incident recommends: completed, verified and
    the incident resolved; DemoError otherwise."""
    # Nothing to say first: the stream tells it, often already under way.
    incident = next(i for i in story.concluded if story.services.get(i) == service)
    demo.teller.waiting(f"the remediation of {service}: steps, then verification in Prometheus")

    def failed() -> SagaTale | None:
        return next((t for t in story.sagas_of(incident)
                     if t.ended not in (None, "SagaCompleted")), None)  # fmt: skip

    await _told(demo, story, lambda: incident in story.resolved or failed() is not None,
                f"act one: {incident} was not resolved by a remediation")  # fmt: skip
    tale = failed()
    if incident not in story.resolved and tale is not None:
        raise DemoError(f"act one: the remediation of {incident} ended with {tale.ended}: "
                        f"{tale.reason}")  # fmt: skip
    demo.teller.waiting("every alert of act one to resolve")
    try:
        await demo.until(asyncio.wait_for(demo.quiet(story), ACT_SECONDS))
    except TimeoutError:
        raise DemoError(f"act one: its alerts did not all resolve within {ACT_SECONDS:g} s "
                        f"(alerts: {demo.cfg.prometheus_url}/alerts)") from None  # fmt: skip


async def act_two(demo: Demo, js: JetStreamContext, shop: Shop, story: Story) -> None:
    """A release train, a config broken by hand, the on-call's plan that cannot help: its
    verification fails and both steps are undone in reverse; DemoError otherwise."""
    say = demo.teller.say
    say("act two  a release train of healthy versions, then a config changed by hand", "bold")
    before = {service: await demo.deploy(js, shop, service, version) for service, version in TRAIN}
    await _configure(shop, MISCONFIGURED, BAD_TIMEOUT)
    say(f"config   {MISCONFIGURED}: dependency timeout {DEPENDENCY_TIMEOUT:g} s -> "
        f"{BAD_TIMEOUT * 1000:g} ms, set by hand (someone meant 10 s): no pipeline records "
        "it", "magenta")  # fmt: skip
    seen = len(story.detected)
    demo.teller.waiting(f"waiting for Prometheus to fire on {MISCONFIGURED}")
    await _told(demo, story, lambda: any(s == MISCONFIGURED for _, s in story.detected[seen:]),
                f"act two: no alert on {MISCONFIGURED} after its config change")  # fmt: skip
    incident = next(i for i, s in story.detected[seen:] if s == MISCONFIGURED)
    saga = await _propose_rollback_of_train(demo, js, incident, before)
    demo.teller.waiting("the on-call's plan: steps, then verification in Prometheus")
    await _told(demo, story, lambda: saga in story.sagas and story.sagas[saga].ended is not None,
                f"act two: {saga} did not end")  # fmt: skip
    tale = story.sagas[saga]
    if tale.ended != "SagaCompensated":
        raise DemoError(f"act two: {saga} ended with {tale.ended}, not compensated: "
                        f"{tale.reason or 'its verification passed'}")  # fmt: skip
    await _configure(shop, MISCONFIGURED, DEPENDENCY_TIMEOUT)
    say(f"config   {MISCONFIGURED}: dependency timeout set back to {DEPENDENCY_TIMEOUT:g} s by "
        f"{ON_CALL}", "magenta")  # fmt: skip


async def _propose_rollback_of_train(
    demo: Demo, js: JetStreamContext, incident: str, before: dict[str, str]
) -> str:
    """The on-call's plan, as `vigil propose` records one: each service of the train deployed
    at its version from `before` again. Its saga id."""
    steps = [
        RemediationAction(action="deploy_version", params={"service": s, "version": before[s]})
        for s, _ in TRAIN
    ]
    train = " and ".join(f"{s} {v}" for s, v in TRAIN)
    back = " and ".join(f"{s} {before[s]}" for s, _ in TRAIN)
    demo.teller.say(f"on-call  {MISCONFIGURED} fails since {train} shipped: {ON_CALL} proposes "
                    f"deploying {back} again, as `vigil propose` would", "bold")  # fmt: skip
    catalog, policy = remediation_config(demo.cfg)
    proposal = await propose(
        js, incident, steps, catalog=catalog, policy=policy, by=ON_CALL,
        rationale=f"proposed by {ON_CALL}: {MISCONFIGURED} fails since {train} shipped",
    )  # fmt: skip
    if proposal.refused is not None:
        raise DemoError(f"act two: the on-call's plan was refused: {proposal.refused.reason}")
    return proposal.saga_id


async def _configure(shop: Shop, service: str, timeout: float) -> None:
    """Set `service`'s dependency timeout through its admin endpoint."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{shop.services[service].url}/admin/config",
            json={"dependency_timeout_seconds": timeout},
        )
    if answer.status_code != 200:
        raise DemoError(f"configuring {service}: {answer.status_code} {answer.text}")


async def versions(shop: Shop) -> dict[str, Any]:
    """The version each service says it runs (its `/admin/release`)."""
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [await client.get(f"{s.url}/admin/release") for s in shop.services.values()]
    return {a.json()["service"]: a.json()["version"] for a in answers}
