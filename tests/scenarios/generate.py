"""Regenerate every incident scenario under tests/scenarios/ (docs/scenarios.md), byte for byte.

    python -m tests.scenarios.generate [OUT_DIR]

Each scenario is a story told as effects on a shop's services (tests/scenarios/sim.py): what
changed, what broke, what the on-call saw. The truth in `expected.yaml` is the story's, not
what any rule would find. Metrics are simulated one sample a minute with seeded noise, so the
output is the same on every run; gzip is written with mtime 0. Alerts fire where Prometheus
would fire their rules on these samples (5-minute rates, a rule's `for`), and the generator
refuses a story whose alerts do not fire as told.

Units: minutes from the window's start, seconds of latency, requests per second, cores, bytes.
"""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

if not __package__:  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.scenarios.sim import (
    Instance,
    Rule,
    Service,
    Simulation,
    cpu_above,
    error_ratio,
    factor,
    firing,
    latency_p99,
    oom_sawtooth,
    ramp,
    restarts,
    scaled,
    target_down,
)

HERE = Path(__file__).parent
DURATION = 120
"""minutes in every window"""
TRIGGER_WINDOW = (75, 105)
"""minutes the trigger must fire within: a baseline before it, samples after it"""

CATALOG: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            "frontend",
            2,
            rps=120,
            latency=0.06,
            cpu_per_request=0.01,
            memory=220e6,
            owner="team-web",
            depends_on=("checkout", "search", "catalog", "recommendations"),
        ),
        Service(
            "checkout",
            3,
            rps=35,
            latency=0.11,
            memory=420e6,
            depends_on=("payments", "inventory", "orders-db", "redis"),
        ),
        Service("payments", 2, rps=22, latency=0.14, memory=350e6, owner="team-payments"),
        Service("inventory", 2, rps=55, latency=0.025, memory=380e6, depends_on=("postgres",)),
        Service(
            "orders-db",
            1,
            rps=140,
            latency=0.003,
            sigma=0.7,
            error_ratio=0.0005,
            cpu_per_request=0.002,
            cpu_limit=4.0,
            memory=2.1e9,
            owner="team-data",
        ),
        Service(
            "postgres",
            1,
            rps=180,
            latency=0.002,
            sigma=0.7,
            error_ratio=0.0005,
            cpu_per_request=0.002,
            cpu_limit=4.0,
            memory=3.2e9,
            owner="team-data",
        ),
        Service(
            "redis",
            2,
            rps=900,
            latency=0.0006,
            sigma=0.5,
            error_ratio=0.0002,
            cpu_per_request=0.0004,
            cpu_limit=1.0,
            memory=1.2e9,
            owner="team-platform",
        ),
        Service(
            "search",
            2,
            rps=60,
            latency=0.08,
            cpu_per_request=0.012,
            memory=900e6,
            owner="team-search",
        ),
        Service(
            "catalog",
            1,
            rps=80,
            latency=0.035,
            memory=310e6,
            owner="team-catalog",
            depends_on=("postgres", "redis"),
        ),
        Service(
            "recommendations",
            1,
            rps=45,
            latency=0.07,
            memory=650e6,
            owner="team-discovery",
            depends_on=("redis",),
        ),
    )
}


@dataclass
class Case:
    """One scenario: the simulation, its alert rules (the trigger first), what changed, and
    the truth."""

    sim: Simulation
    story: str
    rules: list[Rule]
    category: str
    service: str | None
    acceptable: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    before_trigger: list[str] = field(default_factory=list)
    """alertnames the story says fire before the trigger"""


def _sim(name: str, start: str, services: list[str]) -> Simulation:
    when = datetime.fromisoformat(start).replace(tzinfo=UTC)
    return Simulation(name, when, DURATION, [CATALOG[s] for s in services])


def deploy_change(minute: int, service: str, version: str, description: str) -> dict[str, Any]:
    return {
        "at_minute": minute,
        "service": service,
        "kind": "deploy",
        "description": description,
        "version": version,
    }


def setting_change(
    minute: int, service: str, kind: str, key: str, value: Any, description: str
) -> dict[str, Any]:
    return {
        "at_minute": minute,
        "service": service,
        "kind": kind,
        "description": description,
        "key": key,
        "value": value,
    }


# --- the scenarios -----------------------------------------------------------------------


def checkout_bad_deploy() -> Case:
    sim = _sim(
        "checkout-bad-deploy",
        "2026-03-12T13:10",
        ["frontend", "checkout", "payments", "recommendations"],
    )
    sim.fx("checkout").err500.append(scaled(0.11, ramp(85, 87)))
    sim.fx("frontend").err500.append(scaled(0.03, ramp(85, 87)))
    return Case(
        sim,
        "checkout v2.14.0 shipped a serializer change that throws on carts holding a gift "
        "card: 11% of checkout requests fail with 500 from a minute after the rollout. "
        "recommendations was deployed 3 minutes earlier and is innocent (frontend calls it, "
        "checkout does not).",
        [error_ratio("checkout", 0.05, for_minutes=2), error_ratio("frontend", 0.02)],
        "deploy_or_config_change",
        "checkout",
        ["error_rate_regression"],
        [
            deploy_change(81, "recommendations", "v3.8.1", "recommendations: new carousel layout"),
            deploy_change(84, "checkout", "v2.14.0", "checkout: cart serializer rewrite"),
        ],
    )


def checkout_orders_db_slow() -> Case:
    sim = _sim(
        "checkout-orders-db-slow",
        "2026-04-07T09:25",
        ["frontend", "checkout", "payments", "inventory", "orders-db", "redis"],
    )
    db = sim.fx("orders-db")
    db.latency.append(factor(25, ramp(80, 86)))
    db.spread.append(scaled(0.3, ramp(80, 86)))
    db.err500.append(scaled(0.06, ramp(82, 86)))
    db.error_seconds = 1.0
    co = sim.fx("checkout")
    co.latency.append(factor(6, ramp(81, 86)))
    co.err500.append(scaled(0.09, ramp(83, 87)))
    co.error_seconds = 2.0
    sim.fx("frontend").err500.append(scaled(0.025, ramp(83, 87)))
    sim.fx("frontend").latency.append(factor(2, ramp(81, 86)))
    return Case(
        sim,
        "orders-db's data volume hit its provisioned IOPS after a week of growth: queries "
        "went from milliseconds to a tenth of a second and 6% time out; checkout, which "
        "writes every order there, fails 9% of requests on its 2 s deadline. Nothing was "
        "changed on orders-db; payments' deploy 10 minutes earlier is innocent. orders-db's "
        "own slow-query alert fires only after checkout's.",
        [
            error_ratio("checkout", 0.05, for_minutes=2),
            latency_p99("orders-db", 0.5, for_minutes=7),
        ],
        "dependency_failure",
        "orders-db",
        ["resource_saturation"],
        [deploy_change(75, "payments", "v1.9.3", "payments: bump HTTP client library")],
    )


def checkout_memory_leak() -> Case:
    sim = _sim(
        "checkout-memory-leak",
        "2026-02-18T16:40",
        ["frontend", "checkout", "payments", "inventory"],
    )
    for i, (extra, oom) in enumerate(((52e6, 86), (24e6, 90), (5e6, 93))):
        inst = sim.instance("checkout", i)
        inst.restarts = [oom]
        inst.memory = oom_sawtooth(extra, 7e6, [oom])
    co = sim.fx("checkout")
    co.latency.append(factor(3, ramp(78, 85, end=95, fall=3)))
    co.spread.append(scaled(0.25, ramp(78, 85, end=95, fall=3)))
    co.err500.append(scaled(0.05, ramp(81, 86, end=95, fall=3)))
    co.cpu_per_request.append(factor(1.8, ramp(76, 85, end=95, fall=3)))  # GC
    sim.fx("frontend").err500.append(scaled(0.015, ramp(82, 86, end=96, fall=3)))
    return Case(
        sim,
        "checkout v2.13.0 (deployed two days ago) keeps every cart's price quote in an "
        "unbounded cache: resident memory climbs ~7 MB a minute on each pod for the whole "
        "window, GC thrashes near the 1 GiB limit and the pods are OOM-killed one after "
        "another from minute 86. frontend's deploy at minute 82 is innocent (it calls "
        "checkout; nothing checkout calls changed).",
        [error_ratio("checkout", 0.05, for_minutes=2), restarts("checkout", 1)],
        "memory_leak",
        "checkout",
        ["infrastructure_node", "resource_saturation"],
        [deploy_change(82, "frontend", "v5.2.0", "frontend: new product page images")],
    )


def checkout_node_failure() -> Case:
    sim = _sim(
        "checkout-node-failure",
        "2026-05-21T11:05",
        ["frontend", "checkout", "payments", "inventory"],
    )
    dead = sim.instance("checkout", 1)
    dead.down_at, dead.gone_at = 88, 94
    sim.instances["checkout"].append(Instance("checkout-4", first=97))
    sim.instance("checkout", 2).restarts = [91]
    co = sim.fx("checkout")
    co.latency.append(factor(2.5, ramp(88, 90, end=99, fall=3)))
    co.err503.append(scaled(0.09, ramp(88, 89, end=98, fall=3)))
    co.cpu_per_request.append(factor(1.3, ramp(88, 90, end=99, fall=3)))
    sim.fx("frontend").err500.append(scaled(0.03, ramp(88, 89, end=98, fall=3)))
    return Case(
        sim,
        "The node under checkout-2 lost its network (a kernel NIC driver hang): the target "
        "went down at minute 88 and was dropped at 94; the two survivors took its traffic, "
        "shed 9% of requests with 503 and one was restarted by its liveness probe. A new "
        "pod (checkout-4) came up at minute 97. inventory's cache TTL change at minute 80 "
        "is innocent.",
        [error_ratio("checkout", 0.05, for_minutes=2), target_down("checkout")],
        "infrastructure_node",
        "checkout",
        ["resource_saturation"],
        [
            setting_change(
                80,
                "inventory",
                "config",
                "cache_ttl_seconds",
                300,
                "inventory: stock cache TTL 60s -> 300s",
            )
        ],
        before_trigger=["CheckoutTargetDown"],
    )


def frontend_latency_payments_deploy() -> Case:
    sim = _sim(
        "frontend-latency-payments-deploy",
        "2026-06-09T14:20",
        ["frontend", "checkout", "payments", "inventory", "search", "catalog"],
    )
    pay = sim.fx("payments")
    pay.latency.append(factor(9, ramp(89, 91)))
    pay.spread.append(scaled(0.2, ramp(89, 91)))
    pay.err500.append(scaled(0.02, ramp(89, 91)))
    pay.error_seconds = 3.0
    co = sim.fx("checkout")
    co.latency.append(factor(3.5, ramp(89, 91)))
    co.spread.append(scaled(0.3, ramp(89, 91)))
    fe = sim.fx("frontend")
    fe.latency.append(factor(2, ramp(89, 92)))
    fe.spread.append(scaled(0.5, ramp(89, 92)))
    return Case(
        sim,
        "payments v4.7.0 added a synchronous call to a fraud-scoring API in the card path: "
        "payments' median latency went up ninefold, checkout waits on it, and the frontend's "
        "p99 passed a second. The page is on frontend, two hops above the change. catalog's "
        "deploy an hour earlier is innocent.",
        [latency_p99("frontend", 1.0), latency_p99("payments", 2.0, for_minutes=10)],
        "deploy_or_config_change",
        "payments",
        ["dependency_failure"],
        [
            deploy_change(30, "catalog", "v2.2.0", "catalog: faceted filters"),
            deploy_change(88, "payments", "v4.7.0", "payments: fraud scoring before capture"),
        ],
    )


def checkout_inventory_pages_first() -> Case:
    sim = _sim(
        "checkout-inventory-pages-first",
        "2026-07-14T10:45",
        ["frontend", "checkout", "inventory", "postgres", "payments", "redis"],
    )
    pg = sim.fx("postgres")
    pg.latency.append(factor(30, ramp(82, 84)))
    pg.spread.append(scaled(0.4, ramp(82, 84)))
    pg.err500.append(scaled(0.05, ramp(83, 86)))
    pg.error_seconds = 1.0
    inv = sim.fx("inventory")
    inv.latency.append(factor(12, ramp(82, 85)))
    inv.err500.append(scaled(0.12, ramp(83, 86)))
    inv.error_seconds = 1.0
    co = sim.fx("checkout")
    co.err500.append(scaled(0.07, ramp(85, 89)))
    co.latency.append(factor(2, ramp(84, 88)))
    sim.fx("frontend").err500.append(scaled(0.02, ramp(85, 89)))
    return Case(
        sim,
        "An analyst's ad-hoc report on the stock table took row locks on postgres: "
        "inventory's queries queued behind them and 5% hit the lock timeout. inventory's "
        "latency alert paged four minutes before checkout's error alert, so the on-call "
        "looked at inventory first; the culprit is postgres underneath it, which has no "
        "alert of its own. No change was made anywhere.",
        [error_ratio("checkout", 0.05), latency_p99("inventory", 1.0, for_minutes=5)],
        "dependency_failure",
        "postgres",
        ["resource_saturation"],
        before_trigger=["InventoryHighLatency"],
    )


def frontend_traffic_surge() -> Case:
    sim = _sim(
        "frontend-traffic-surge",
        "2026-09-24T13:30",
        ["frontend", "checkout", "search", "catalog", "payments", "redis"],
    )
    surge = ramp(84, 88)
    fe = sim.fx("frontend")
    fe.traffic.append(factor(2.6, surge))
    fe.latency.append(factor(4, ramp(86, 90)))
    fe.spread.append(scaled(0.3, ramp(86, 90)))
    fe.err503.append(scaled(0.02, ramp(87, 90)))
    for service, k in (("checkout", 1.8), ("catalog", 2.2), ("search", 2.4), ("redis", 2.0)):
        sim.fx(service).traffic.append(factor(k, surge))
    sim.fx("search").latency.append(factor(1.5, ramp(86, 90)))
    sim.fx("catalog").latency.append(factor(1.3, ramp(86, 90)))
    return Case(
        sim,
        "Marketing's autumn-sale push notification went to every app user at 14:54 UTC, on "
        "top of the daily peak: frontend requests rose 2.6-fold within four minutes, its "
        "pods ran near their CPU limit and p99 latency passed 750 ms; catalog, search and "
        "checkout saw the wave too. Nothing was deployed or changed.",
        [latency_p99("frontend", 0.75)],
        "traffic_surge",
        "frontend",
        ["resource_saturation"],
    )


def search_reindex_cpu() -> Case:
    sim = _sim(
        "search-reindex-cpu",
        "2026-01-27T08:15",
        ["frontend", "search", "checkout", "catalog", "payments"],
    )
    se = sim.fx("search")
    se.cpu.append(scaled(1.7, ramp(76, 80)))
    se.latency.append(factor(6, ramp(80, 86)))
    se.spread.append(scaled(0.25, ramp(80, 86)))
    sim.fx("frontend").latency.append(factor(1.2, ramp(81, 86)))
    return Case(
        sim,
        "A scheduled full reindex (a cron job inside the search pods, not a deploy) started "
        "at minute 76 and took every core it could: search's pods ran at their 2-core limit "
        "with flat traffic, queries queued and p99 passed a second. checkout's deploy at "
        "minute 84 is off the path (frontend calls search and checkout separately).",
        [latency_p99("search", 1.0), cpu_above("search", 1.8)],
        "resource_saturation",
        "search",
        [],
        [deploy_change(84, "checkout", "v2.16.1", "checkout: address autocomplete")],
    )


def payments_pool_config() -> Case:
    sim = _sim(
        "payments-pool-config",
        "2026-08-05T19:50",
        ["frontend", "checkout", "payments", "recommendations", "redis"],
    )
    pay = sim.fx("payments")
    pay.err503.append(scaled(0.16, ramp(87, 88)))
    pay.latency.append(factor(3, ramp(87, 88)))
    pay.error_seconds = 1.0
    sim.fx("checkout").err500.append(scaled(0.05, ramp(87, 89)))
    sim.fx("recommendations").latency.append(factor(1.15, ramp(84, 85)))
    return Case(
        sim,
        "A config push meant for the staging payments set db_pool_max_connections to 5 in "
        "production (it was 50): from a minute later 16% of payment requests wait a second "
        "for a connection and fail with 503. The new_ranking_model flag flipped on "
        "recommendations three minutes earlier is off the path (a little slower, harmless).",
        [error_ratio("payments", 0.05, for_minutes=2), error_ratio("checkout", 0.03)],
        "deploy_or_config_change",
        "payments",
        ["resource_saturation", "error_rate_regression"],
        [
            setting_change(
                83,
                "recommendations",
                "feature_flag",
                "new_ranking_model",
                True,
                "recommendations: new ranking model on for all users",
            ),
            setting_change(
                86,
                "payments",
                "config",
                "db_pool_max_connections",
                5,
                "payments: database pool size (was 50)",
            ),
        ],
    )


def frontend_inventory_leak() -> Case:
    sim = _sim(
        "frontend-5xx-inventory-leak",
        "2026-10-02T06:35",
        ["frontend", "checkout", "inventory", "postgres", "search"],
    )
    for i, oom in enumerate((88, 91)):
        inst = sim.instance("inventory", i)
        inst.restarts = [oom]
        inst.memory = oom_sawtooth(max(0.0, 690e6 - 7.5e6 * oom), 7.5e6, [oom])
    inv = sim.fx("inventory")
    inv.latency.append(factor(4, ramp(80, 87, end=94, fall=3)))
    inv.err500.append(scaled(0.08, ramp(80, 87, end=94, fall=3)))
    inv.cpu_per_request.append(factor(2, ramp(78, 87, end=94, fall=3)))
    sim.fx("checkout").err500.append(scaled(0.12, ramp(84, 89, end=96, fall=3)))
    sim.fx("frontend").err500.append(scaled(0.06, ramp(85, 89, end=97, fall=3)))
    return Case(
        sim,
        "inventory leaks a goroutine and its buffers per cancelled stock request (a bug "
        "months old that a new mobile client's retry storm makes bite): memory climbs 7.5 MB "
        "a minute on both pods, GC thrashes, stock lookups fail and the pods are OOM-killed "
        "at minutes 88 and 91. The page is on frontend, two hops up. No change recorded.",
        [
            error_ratio("frontend", 0.04, for_minutes=2),
            error_ratio("checkout", 0.05, for_minutes=5),
            restarts("inventory", 0),
        ],
        "memory_leak",
        "inventory",
        ["dependency_failure", "infrastructure_node"],
        before_trigger=["InventoryRestarting"],
    )


def node_loss_checkout_redis() -> Case:
    sim = _sim(
        "node-loss-checkout-redis",
        "2026-03-30T21:10",
        ["frontend", "checkout", "redis", "payments", "inventory"],
    )
    for service, index, new in (("checkout", 0, 99), ("redis", 1, 100)):
        dead = sim.instance(service, index)
        dead.down_at, dead.gone_at = 91, 97
        sim.instances[service].append(Instance(f"{service}-{len(sim.instances[service]) + 1}"))
        sim.instances[service][-1].first = new
    co = sim.fx("checkout")
    co.err500.append(scaled(0.1, ramp(91, 92, end=99, fall=4)))
    co.latency.append(factor(1.5, ramp(91, 92, end=99, fall=4)))
    co.error_seconds = 0.5
    sim.fx("frontend").err500.append(scaled(0.04, ramp(91, 92, end=99, fall=4)))
    return Case(
        sim,
        "A hypervisor host failed and took the node ip-10-0-7-31 with it, and on it "
        "checkout-1 and redis-2 (the replica checkout reads carts from). Both targets went "
        "down at minute 91; checkout's surviving pods failed cart reads on their 0.5 s "
        "connect timeout until the redis client dropped the dead replica. redis' target-down "
        "warning came before checkout's page. No single service is the cause: the node is.",
        [
            error_ratio("checkout", 0.05, for_minutes=2),
            target_down("redis"),
            target_down("checkout"),
        ],
        "infrastructure_node",
        None,
        ["dependency_failure"],
        before_trigger=["RedisTargetDown", "CheckoutTargetDown"],
    )


def checkout_latency_unknown() -> Case:
    sim = _sim(
        "checkout-latency-unknown",
        "2026-05-03T02:50",
        ["frontend", "checkout", "payments", "inventory", "orders-db", "catalog"],
    )
    sim.fx("checkout").latency.append(factor(3.2, ramp(86, 92)))
    sim.fx("checkout").spread.append(scaled(0.1, ramp(86, 92)))
    sim.fx("frontend").latency.append(factor(1.15, ramp(86, 92)))
    return Case(
        sim,
        "In the night's low traffic checkout's p99 latency tripled over six minutes and "
        "stayed there. Traffic, CPU, memory, restarts and every dependency stayed flat; "
        "nothing changed except catalog's deploy an hour before, off the path. The "
        "postmortem never found the cause (suspected: a noisy neighbour on shared storage, "
        "which Prometheus does not see).",
        [latency_p99("checkout", 0.8, for_minutes=5)],
        "unknown",
        None,
        [],
        [deploy_change(25, "catalog", "v2.3.1", "catalog: fix price rounding")],
    )


def checkout_deploy_latency() -> Case:
    sim = _sim(
        "checkout-deploy-latency",
        "2026-04-22T12:00",
        ["frontend", "checkout", "orders-db", "payments", "inventory"],
    )
    co = sim.fx("checkout")
    co.latency.append(factor(4.5, ramp(91, 93)))
    co.cpu_per_request.append(factor(1.4, ramp(91, 93)))
    db = sim.fx("orders-db")
    db.traffic.append(factor(4, ramp(91, 93)))
    db.latency.append(factor(1.3, ramp(91, 93)))
    sim.fx("frontend").latency.append(factor(1.3, ramp(91, 93)))
    return Case(
        sim,
        "checkout v2.15.0 loads each order line with its own query (an N+1 the ORM upgrade "
        "brought): orders-db queries went up fourfold and checkout's p99 passed a second. "
        "No errors at all; latency is the only symptom.",
        [latency_p99("checkout", 1.0)],
        "deploy_or_config_change",
        "checkout",
        [],
        [deploy_change(90, "checkout", "v2.15.0", "checkout: ORM upgrade")],
    )


def checkout_flag_hammers_redis() -> Case:
    sim = _sim(
        "checkout-flag-hammers-redis",
        "2026-06-28T17:35",
        ["frontend", "checkout", "redis", "payments", "catalog"],
    )
    rd = sim.fx("redis")
    rd.traffic.append(factor(6, ramp(82, 84)))
    rd.latency.append(factor(40, ramp(84, 88)))
    rd.spread.append(scaled(0.3, ramp(84, 88)))
    co = sim.fx("checkout")
    co.latency.append(factor(3, ramp(84, 88)))
    co.err500.append(scaled(0.07, ramp(86, 90)))
    co.cpu_per_request.append(factor(1.3, ramp(82, 84)))
    sim.fx("catalog").latency.append(factor(1.8, ramp(84, 88)))
    return Case(
        sim,
        "The feature flag cart_recompute_on_view made checkout recompute the cart from redis "
        "on every page view: redis commands went up sixfold, its single core pegged and "
        "redis' CPU alert paged first. checkout's error alert followed as its redis calls "
        "timed out; catalog, also on redis, slowed. The culprit is checkout's flag, not "
        "redis.",
        [error_ratio("checkout", 0.05), cpu_above("redis", 0.9, for_minutes=2)],
        "deploy_or_config_change",
        "checkout",
        ["dependency_failure", "resource_saturation"],
        [
            setting_change(
                81,
                "checkout",
                "feature_flag",
                "cart_recompute_on_view",
                True,
                "checkout: recompute cart totals on every view",
            )
        ],
        before_trigger=["RedisCpuHigh"],
    )


def payments_errors_no_changes() -> Case:
    sim = _sim(
        "payments-errors-no-changes",
        "2026-09-08T04:30",
        ["frontend", "checkout", "payments", "inventory"],
    )
    sim.fx("payments").err500.append(scaled(0.09, ramp(88, 91)))
    sim.fx("checkout").err500.append(scaled(0.03, ramp(88, 91)))
    return Case(
        sim,
        "The card network's gateway started rejecting authorisations for one issuer's cards "
        "with an internal error; payments passes that on as 500 for 9% of requests. The "
        "gateway is outside the topology and the metrics; nothing changed in the shop.",
        [error_ratio("payments", 0.05)],
        "error_rate_regression",
        "payments",
        ["dependency_failure", "unknown"],
    )


SCENARIOS: tuple[Callable[[], Case], ...] = (
    checkout_bad_deploy,
    checkout_orders_db_slow,
    checkout_memory_leak,
    checkout_node_failure,
    frontend_latency_payments_deploy,
    checkout_inventory_pages_first,
    frontend_traffic_surge,
    search_reindex_cpu,
    payments_pool_config,
    frontend_inventory_leak,
    node_loss_checkout_redis,
    checkout_latency_unknown,
    checkout_deploy_latency,
    checkout_flag_hammers_redis,
    payments_errors_no_changes,
)


# --- writing -----------------------------------------------------------------------------


class ScenarioStoryError(AssertionError):
    """The simulated alerts do not fire as the story tells."""


def _yaml(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True).encode()


def alerts(case: Case) -> list[dict[str, Any]]:
    """The case's alerts as Prometheus would fire them: the trigger first, then the others
    by when they start. ScenarioStoryError when one never fires or the order is not the
    story's."""
    sim = case.sim
    fired: list[dict[str, Any]] = []
    for rule in case.rules:
        when = firing(sim, rule)
        if when is None:
            raise ScenarioStoryError(f"{sim.name}: {rule.alertname} never fires")
        start, end = when
        fired.append(
            {
                "labels": {
                    "alertname": rule.alertname,
                    "service": rule.service,
                    "severity": rule.severity,
                },
                "annotations": {"summary": rule.summary},
                "starts_at_minute": start,
                "ends_at_minute": end,
                "expr": rule.expr,
                "for_minutes": rule.for_minutes,
            }
        )
    trigger, others = fired[0], sorted(fired[1:], key=lambda a: a["starts_at_minute"])
    low, high = TRIGGER_WINDOW
    if not low <= trigger["starts_at_minute"] <= high:
        raise ScenarioStoryError(
            f"{sim.name}: the trigger fires at minute {trigger['starts_at_minute']}"
        )
    for other in others:
        early = other["starts_at_minute"] < trigger["starts_at_minute"]
        if early != (other["labels"]["alertname"] in case.before_trigger):
            raise ScenarioStoryError(
                f"{sim.name}: {other['labels']['alertname']} fires at minute "
                f"{other['starts_at_minute']}, trigger at {trigger['starts_at_minute']}"
            )
    return [trigger, *others]


def topology(sim: Simulation) -> dict[str, Any]:
    """The services of the scenario and what each calls among them."""
    return {
        "services": [
            {
                "name": s.name,
                "depends_on": [d for d in s.depends_on if d in sim.services],
                "owner": s.owner,
                "runbook": f"https://runbooks.example/{s.name}",
            }
            for s in sim.services.values()
        ]
    }


def files(case: Case) -> dict[str, bytes]:
    """Every file of the scenario folder, by name."""
    sim = case.sim
    sim.run()
    expected: dict[str, Any] = {
        "root_cause_category": case.category,
        "root_cause_service": case.service,
    }
    if case.acceptable:
        expected["acceptable_top3"] = case.acceptable
    meta = {
        "name": sim.name,
        "start": sim.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_minutes": sim.duration,
        "story": case.story,
    }
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(sim.openmetrics().encode())
    return {
        "scenario.yaml": _yaml(meta),
        "alerts.yaml": _yaml(alerts(case)),
        "changes.yaml": _yaml(sorted(case.changes, key=lambda c: c["at_minute"])),
        "topology.yaml": _yaml(topology(sim)),
        "expected.yaml": _yaml(expected),
        "metrics.om.gz": buf.getvalue(),
    }


def write_cases(makers: Sequence[Callable[[], Case]], out: Path) -> list[Path]:
    """Write the scenario folder of each maker under `out`; the folders written."""
    written = []
    for make in makers:
        case = make()
        folder = out / case.sim.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files(case).items():
            (folder / name).write_bytes(data)
        written.append(folder)
    return written


def generate(out: Path) -> list[Path]:
    """Write every scenario folder under `out`; the folders written."""
    return write_cases(SCENARIOS, out)


def main(
    argv: list[str], makers: Sequence[Callable[[], Case]] = SCENARIOS, home: Path = HERE
) -> None:
    """Write `makers`' folders into the folder given, else `home`, and name each."""
    out = Path(argv[0]) if argv else home
    for folder in write_cases(makers, out):
        print(folder)


if __name__ == "__main__":
    main(sys.argv[1:])
