"""Regenerate the held-out incident scenarios under tests/scenarios_heldout/, byte for byte.

    python -m tests.scenarios_heldout.generate [OUT_DIR]

A second set of scenarios (docs/scenarios.md), written without looking at the analyst, to
measure whether it generalises beyond the 15 in tests/scenarios/. Other shops, topologies,
magnitudes and timings: an ordering API (api-gateway -> orders -> stock -> stock-mysql,
orders -> pricing), a mobile backend (mobile-bff -> profile -> sessions-redis, mobile-bff ->
feed -> feed-cache), and a queue consumer (invoice-worker). Each story is told as effects on
those services with the same simulator (tests/scenarios/sim.py) and written by the same
writer (tests/scenarios/generate.py): seeded noise, gzip with mtime 0, alerts where
Prometheus would fire their rules, and a refusal when they do not fire as the story says.
The truth in `expected.yaml` is the story's, as a postmortem would settle it.

Units: minutes from the window's start, seconds of latency, requests per second, cores, bytes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

if not __package__:  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.scenarios.generate import Case, deploy_change, main, setting_change, write_cases
from tests.scenarios.sim import (
    Service,
    Simulation,
    cpu_above,
    error_ratio,
    factor,
    latency_p99,
    oom_sawtooth,
    ramp,
    scaled,
    target_down,
)

HERE = Path(__file__).parent

CATALOG: dict[str, Service] = {
    s.name: s
    for s in (
        # --- an ordering API -------------------------------------------------------------
        Service(
            "api-gateway",
            2,
            rps=210,
            latency=0.03,
            sigma=0.6,
            cpu_per_request=0.003,
            memory=180e6,
            owner="team-edge",
            depends_on=("orders", "accounts", "search-api"),
        ),
        Service(
            "orders",
            2,
            rps=48,
            latency=0.09,
            memory=520e6,
            owner="team-orders",
            depends_on=("stock", "pricing"),
        ),
        Service(
            "stock",
            2,
            rps=75,
            latency=0.028,
            memory=290e6,
            owner="team-orders",
            depends_on=("stock-mysql",),
        ),
        Service(
            "stock-mysql",
            1,
            rps=260,
            latency=0.0025,
            sigma=0.75,
            error_ratio=0.0003,
            cpu_per_request=0.0015,
            cpu_limit=8.0,
            memory=11.5e9,
            owner="team-dba",
        ),
        Service(
            "pricing",
            1,
            rps=44,
            latency=0.045,
            cpu_per_request=0.02,
            cpu_limit=1.5,
            memory=410e6,
            owner="team-pricing",
        ),
        Service(
            "accounts",
            2,
            rps=30,
            latency=0.07,
            memory=330e6,
            owner="team-identity",
            depends_on=("accounts-postgres",),
        ),
        Service(
            "accounts-postgres",
            1,
            rps=95,
            latency=0.0018,
            sigma=0.7,
            error_ratio=0.0003,
            cpu_per_request=0.002,
            cpu_limit=4.0,
            memory=4.4e9,
            owner="team-dba",
        ),
        Service(
            "search-api",
            2,
            rps=70,
            latency=0.05,
            cpu_per_request=0.009,
            memory=760e6,
            owner="team-search",
        ),
        # --- a queue consumer ------------------------------------------------------------
        Service(
            "invoice-worker",
            2,
            rps=9,  # messages of the order-events queue handled per second
            latency=0.18,
            sigma=0.5,
            error_ratio=0.001,
            cpu_per_request=0.03,
            memory=640e6,
            owner="team-billing",
            depends_on=("invoices-db", "orders"),
        ),
        Service(
            "invoices-db",
            1,
            rps=40,
            latency=0.003,
            sigma=0.7,
            error_ratio=0.0003,
            cpu_per_request=0.002,
            cpu_limit=4.0,
            memory=2.6e9,
            owner="team-dba",
        ),
        Service(
            "notifications",
            1,
            rps=16,
            latency=0.11,
            error_ratio=0.003,
            memory=240e6,
            owner="team-engagement",
        ),
        # --- a mobile backend ------------------------------------------------------------
        Service(
            "mobile-bff",
            2,
            rps=160,
            latency=0.045,
            cpu_per_request=0.005,
            memory=260e6,
            owner="team-mobile",
            depends_on=("profile", "feed", "notifications"),
        ),
        Service(
            "profile",
            2,
            rps=85,
            latency=0.032,
            memory=480e6,
            owner="team-identity",
            depends_on=("sessions-redis", "avatars"),
        ),
        Service(
            "sessions-redis",
            1,
            rps=700,
            latency=0.0005,
            sigma=0.5,
            error_ratio=0.0001,
            cpu_per_request=0.0004,
            cpu_limit=1.0,
            memory=1.6e9,
            owner="team-platform",
        ),
        Service(
            "avatars",
            2,
            rps=40,
            latency=0.02,
            memory=200e6,
            owner="team-mobile",
        ),
        Service(
            "feed",
            2,
            rps=65,
            latency=0.12,
            memory=700e6,
            owner="team-engagement",
            depends_on=("feed-cache",),
        ),
        Service(
            "feed-cache",
            1,
            rps=400,
            latency=0.0007,
            sigma=0.5,
            error_ratio=0.0001,
            cpu_per_request=0.0003,
            cpu_limit=1.0,
            memory=3.0e9,
            owner="team-platform",
        ),
    )
}


def _sim(name: str, start: str, duration: int, services: list[str], **instances: int) -> Simulation:
    """A window of `duration` minutes over the named services; `instances` overrides how
    many targets a service has (`stock_mysql=2`)."""
    when = datetime.fromisoformat(start).replace(tzinfo=UTC)
    chosen = []
    for s in services:
        svc = CATALOG[s]
        n = instances.get(s.replace("-", "_"))
        chosen.append(dataclasses.replace(svc, instances=n) if n else svc)
    return Simulation(name, when, duration, chosen)


# --- the scenarios -----------------------------------------------------------------------


def orders_latency_stock_mysql_config() -> Case:
    sim = _sim(
        "orders-latency-stock-mysql-config",
        "2026-11-03T10:20",
        120,
        ["api-gateway", "orders", "stock", "stock-mysql", "pricing", "accounts"],
    )
    db = sim.fx("stock-mysql")
    db.latency.append(factor(7, ramp(80, 88)))
    db.spread.append(scaled(0.35, ramp(80, 88)))
    db.cpu.append(scaled(0.6, ramp(80, 88)))  # I/O wait and page reads
    db.memory.append(scaled(-9.6e9, ramp(79, 83)))  # the buffer pool shrinks online
    st = sim.fx("stock")
    st.latency.append(factor(2.2, ramp(80, 88)))
    st.spread.append(scaled(0.15, ramp(80, 88)))
    od = sim.fx("orders")
    od.latency.append(factor(1.45, ramp(81, 88)))
    od.spread.append(scaled(0.1, ramp(81, 88)))
    sim.fx("api-gateway").latency.append(factor(1.1, ramp(81, 88)))
    return Case(
        sim,
        "A Terraform refactor of the DBA module rendered stock-mysql's innodb_buffer_pool_size "
        "as 2G instead of 12G, applied online at minute 79: the hot stock rows no longer fit "
        "in memory (mysqld's resident memory fell by 9.6 GB) and queries went to disk, "
        "their median rising sevenfold over eight minutes. stock's median latency doubled "
        "(its p99 quadrupled) and orders, two hops above the database, saw its p99 rise "
        "about 1.8-fold, past its 0.5 s alert. No errors. The same stock-mysql got a "
        "harmless long_query_time change at minute 31; orders' own deploy 70 minutes "
        "before the onset is innocent.",
        [latency_p99("orders", 0.5, for_minutes=5)],
        "deploy_or_config_change",
        "stock-mysql",
        ["dependency_failure", "resource_saturation"],
        [
            deploy_change(10, "orders", "v7.12.0", "orders: gift wrap option at checkout"),
            setting_change(
                31,
                "stock-mysql",
                "config",
                "long_query_time",
                0.5,
                "stock-mysql: slow query log threshold 2s -> 0.5s",
            ),
            setting_change(
                79,
                "stock-mysql",
                "config",
                "innodb_buffer_pool_size",
                "2G",
                "stock-mysql: terraform dba-module v3 rollout (buffer pool from the new variable)",
            ),
        ],
    )


def profile_memory_creep() -> Case:
    sim = _sim(
        "profile-memory-creep",
        "2025-12-01T19:05",
        120,
        ["mobile-bff", "profile", "sessions-redis", "avatars", "feed"],
    )
    for i, extra in enumerate((310e6, 290e6)):
        sim.instance("profile", i).memory = oom_sawtooth(extra, 4.2e6, [])
    pr = sim.fx("profile")
    pr.latency.append(factor(2.6, ramp(50, 100)))
    pr.spread.append(scaled(0.2, ramp(50, 100)))
    pr.cpu_per_request.append(factor(1.9, ramp(40, 100)))  # GC
    sim.fx("mobile-bff").latency.append(factor(1.25, ramp(60, 100)))
    return Case(
        sim,
        "profile v5.3.0 (rolled out two days earlier) memoises every user's privacy settings "
        "in a map that is never pruned: each pod's resident memory climbs ~4 MB a minute "
        "through the whole window, from 0.8 to 1.3 GB, with no restart yet. Garbage "
        "collection takes ever more CPU and profile's latency creeps up over fifty minutes "
        "until its p99 alert fires. avatars, which profile calls, was deployed at minute 72 "
        "and stayed healthy throughout.",
        [latency_p99("profile", 0.25, for_minutes=5)],
        "memory_leak",
        "profile",
        ["resource_saturation"],
        [deploy_change(72, "avatars", "v2.4.0", "avatars: serve WebP thumbnails")],
    )


def orders_errors_mysql_replica_down() -> Case:
    sim = _sim(
        "orders-errors-mysql-replica-down",
        "2026-10-14T15:40",
        115,
        ["api-gateway", "orders", "stock", "stock-mysql", "pricing"],
        stock_mysql=2,
    )
    sim.instance("stock-mysql", 1).down_at = 84  # a static target: up stays 0, never dropped
    sim.fx("stock-mysql").latency.append(factor(1.4, ramp(84, 86)))
    st = sim.fx("stock")
    st.err500.append(scaled(0.14, ramp(84, 85)))
    st.latency.append(factor(1.3, ramp(84, 86)))
    st.error_seconds = 1.0  # the driver's connect timeout
    od = sim.fx("orders")
    od.err500.append(scaled(0.07, ramp(84, 86)))
    od.error_seconds = 1.2
    sim.fx("api-gateway").err500.append(scaled(0.015, ramp(84, 86)))
    return Case(
        sim,
        "The VM holding stock-mysql-2, the read replica of the stock database, was lost to a "
        "failed host at minute 84: its target answers no more (up 0). stock's reads that the "
        "load balancer still sent there failed on a 1 s connect timeout (14% of stock "
        "requests), and orders, two hops above the database, failed 7% of its requests and "
        "paged. The database's target-down rule waits 10 minutes and fires after the page. "
        "stock's deploy an hour before is innocent.",
        [
            error_ratio("orders", 0.04, for_minutes=2),
            target_down("stock-mysql", for_minutes=10),
        ],
        "infrastructure_node",
        "stock-mysql",
        ["dependency_failure"],
        [deploy_change(24, "stock", "v3.1.4", "stock: warehouse codes in the API")],
    )


def pricing_retry_storm() -> Case:
    sim = _sim(
        "pricing-retry-storm",
        "2026-11-27T17:10",
        120,
        ["api-gateway", "orders", "pricing", "stock"],
        pricing=2,
    )
    pr = sim.fx("pricing")
    pr.err503.append(scaled(0.45, ramp(78, 78, end=80)))  # the blip: a 2-minute stall
    pr.traffic.append(factor(3.4, ramp(79, 82)))
    pr.latency.append(factor(6, ramp(80, 84)))
    pr.spread.append(scaled(0.3, ramp(80, 84)))
    pr.err503.append(scaled(0.12, ramp(81, 84)))
    pr.error_seconds = 0.8
    od = sim.fx("orders")
    od.err500.append(scaled(0.06, ramp(81, 85)))
    od.latency.append(factor(2.5, ramp(80, 84)))
    od.cpu_per_request.append(factor(1.3, ramp(79, 82)))
    od.error_seconds = 2.0
    sim.fx("api-gateway").err500.append(scaled(0.012, ramp(81, 85)))
    return Case(
        sim,
        "On Black Friday evening pricing stalled for two minutes while reloading its price "
        "lists (routine, it does so hourly). orders' pricing client retries a failed call "
        "three times at once, without backoff (a year-old setting): pricing's requests "
        "rose more than threefold within minutes with orders' own traffic flat, the pods hit "
        "their CPU limit, calls timed out and were retried again, and pricing never "
        "recovered on its own. The page came from orders' error rate and from pricing's CPU. "
        "Nothing was deployed or changed; the postmortem calls it a retry storm: more "
        "requests than pricing can serve.",
        [
            error_ratio("orders", 0.04, for_minutes=3),
            cpu_above("pricing", 1.4, for_minutes=3),
        ],
        "traffic_surge",
        "pricing",
        ["resource_saturation", "dependency_failure"],
        before_trigger=["PricingCpuHigh"],
    )


def invoice_worker_batch_cpu() -> Case:
    sim = _sim(
        "invoice-worker-batch-cpu",
        "2025-12-31T22:30",
        120,
        ["invoice-worker", "invoices-db", "orders", "notifications", "api-gateway"],
    )
    iw = sim.fx("invoice-worker")
    iw.cpu.append(scaled(1.75, ramp(77, 80)))
    iw.latency.append(factor(3.2, ramp(79, 85)))
    iw.spread.append(scaled(0.25, ramp(79, 85)))
    nt = sim.fx("notifications")
    nt.err500.append(scaled(0.09, ramp(72, 74, end=96, fall=2)))
    return Case(
        sim,
        "Finance started the year-end re-rendering of every 2026 invoice as PDF through "
        "invoice-worker's admin endpoint, which runs the batch inside the worker pods: from "
        "minute 77 they ran at their 2-core limit while the order-events queue kept its "
        "usual pace, and handling each message took three times longer until the p99 alert "
        "fired. Meanwhile notifications' push provider rejected 9% of sends for twenty "
        "minutes, a page of its own, unrelated (notifications shares nothing with "
        "invoice-worker). No change was recorded.",
        [
            latency_p99("invoice-worker", 1.2, for_minutes=5),
            error_ratio("notifications", 0.05, for_minutes=3, severity="warning"),
            cpu_above("invoice-worker", 1.8, for_minutes=5),
        ],
        "resource_saturation",
        "invoice-worker",
        [],
        before_trigger=["NotificationsHighErrorRate"],
    )


def accounts_errors_kyc_vendor() -> Case:
    sim = _sim(
        "accounts-errors-kyc-vendor",
        "2026-10-20T08:45",
        120,
        ["api-gateway", "accounts", "accounts-postgres", "orders", "search-api"],
    )
    sim.fx("accounts").err500.append(scaled(0.03, ramp(85, 87)))
    sim.fx("api-gateway").err500.append(scaled(0.004, ramp(85, 87)))
    sim.fx("search-api").latency.append(factor(1.08, ramp(87, 90)))
    return Case(
        sim,
        "The identity-verification vendor that accounts calls at sign-up and on address "
        "changes began answering a share of calls with HTTP 500 (their incident, confirmed "
        "later): 3% of accounts' requests failed from minute 85. The vendor is outside the "
        "topology and the metrics; accounts-postgres stayed flat. search-api's "
        "typo_tolerance flag flipped a minute after the onset is off the path (search-api "
        "got a hair slower, harmlessly).",
        [error_ratio("accounts", 0.02, for_minutes=3)],
        "error_rate_regression",
        "accounts",
        ["dependency_failure", "unknown"],
        [
            setting_change(
                86,
                "search-api",
                "feature_flag",
                "typo_tolerance",
                True,
                "search-api: fuzzy matching of misspelt queries",
            )
        ],
    )


def mobile_bff_sessions_redis_errors() -> Case:
    sim = _sim(
        "mobile-bff-sessions-redis-errors",
        "2026-09-05T12:15",
        120,
        ["mobile-bff", "profile", "sessions-redis", "feed", "feed-cache"],
        sessions_redis=2,
    )
    rd = sim.fx("sessions-redis")
    rd.err500.append(scaled(0.22, ramp(86, 87)))
    pr = sim.fx("profile")
    pr.err500.append(scaled(0.12, ramp(86, 88)))
    pr.latency.append(factor(1.15, ramp(86, 88)))
    sim.fx("mobile-bff").err500.append(scaled(0.06, ramp(86, 88)))
    return Case(
        sim,
        "sessions-redis began answering 22% of commands with errors from minute 86 (the "
        "postmortem traced it to a Redis bug in key eviction under a rare access pattern, "
        "seen in no metric: no change, restart, memory or CPU step). profile, which checks "
        "every session there, failed 12% of requests and mobile-bff, two hops up, 6%, which "
        "paged. mobile-bff's own deploy 50 minutes earlier is innocent.",
        [error_ratio("mobile-bff", 0.04, for_minutes=2)],
        "dependency_failure",
        "sessions-redis",
        ["error_rate_regression"],
        [deploy_change(36, "mobile-bff", "v9.0.2", "mobile-bff: onboarding screens v2")],
    )


def feed_errors_latency_unknown() -> Case:
    sim = _sim(
        "feed-errors-latency-unknown",
        "2026-08-18T05:55",
        120,
        ["mobile-bff", "feed", "feed-cache", "profile", "sessions-redis"],
    )
    fd = sim.fx("feed")
    fd.err500.append(scaled(0.011, ramp(82, 88)))
    fd.latency.append(factor(1.4, ramp(82, 88)))
    fd.spread.append(scaled(0.05, ramp(82, 88)))
    sim.fx("mobile-bff").err500.append(scaled(0.004, ramp(82, 88)))
    return Case(
        sim,
        "In the early morning feed's errors went from 0.2% to about 1.3% and its latency "
        "rose by about half over six minutes, and stayed there. Traffic, CPU, memory, "
        "restarts, targets, feed-cache and every other service stayed flat (mobile-bff "
        "passed a few of feed's errors on); the failures' logs were generic connection "
        "resets. The postmortem never found the cause (suspected: "
        "packet loss in one availability zone's network, which Prometheus does not see). "
        "sessions-redis' config change 40 minutes earlier is off feed's path.",
        [error_ratio("feed", 0.01, for_minutes=5)],
        "unknown",
        None,
        ["error_rate_regression"],
        [
            setting_change(
                48,
                "sessions-redis",
                "config",
                "maxmemory-policy",
                "volatile-lru",
                "sessions-redis: evict only keys with a TTL (was allkeys-lru)",
            )
        ],
    )


SCENARIOS: tuple[Callable[[], Case], ...] = (
    orders_latency_stock_mysql_config,
    profile_memory_creep,
    orders_errors_mysql_replica_down,
    pricing_retry_storm,
    invoice_worker_batch_cpu,
    accounts_errors_kyc_vendor,
    mobile_bff_sessions_redis_errors,
    feed_errors_latency_unknown,
)


# --- writing -----------------------------------------------------------------------------


def generate(out: Path) -> list[Path]:
    """Write every scenario folder under `out`; the folders written."""
    return write_cases(SCENARIOS, out)


if __name__ == "__main__":
    main(sys.argv[1:], SCENARIOS, HERE)
