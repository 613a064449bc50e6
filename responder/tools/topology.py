"""`service_topology`: who a service calls and who calls it, two hops out (each with `via`:
the services one hop nearer that lead to it), with owners, runbooks and which of them are
alerting now.

The map is a YAML file named by VIGIL_TOPOLOGY (sample: deploy/topology.yaml):

    services:
      - name: checkout
        depends_on: [payments, inventory]
        owner: team-shop
        runbook: https://runbooks.example/checkout

Keys other than these are ignored (a file shared with other tools may carry more). What is
alerting comes from the anomalies Vigil holds firing at `now` (`responder/tools/firing.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from responder.tools import Tool, ToolContext
from responder.tools.config_file import load_config_file
from responder.tools.firing import FiringAnomaly, firing_anomalies

MAX_DEPTH = 2
MAX_ALERTS_PER_SERVICE = 5


class TopologyMissing(LookupError):
    """No topology file is configured."""


class ServiceNode(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    depends_on: list[str] = Field(default_factory=list)
    owner: str | None = None
    runbook: str | None = None


class Topology(BaseModel):
    model_config = ConfigDict(extra="ignore")

    services: list[ServiceNode]

    @model_validator(mode="after")
    def _names_are_unique(self) -> Topology:
        seen: set[str] = set()
        for service in self.services:
            if service.name in seen:
                raise ValueError(f"service {service.name!r} is listed twice")
            seen.add(service.name)
        return self

    def node(self, name: str) -> ServiceNode | None:
        return next((s for s in self.services if s.name == name), None)

    def callers(self, name: str) -> list[str]:
        return [s.name for s in self.services if name in s.depends_on]

    def callees(self, name: str) -> list[str]:
        node = self.node(name)
        return list(node.depends_on) if node else []


class TopologyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=256)


async def service_topology(ctx: ToolContext, args: TopologyArgs) -> dict[str, Any]:
    """The service's dependencies and dependents to MAX_DEPTH, and which are alerting."""
    path = ctx.settings.topology_file
    if path is None:
        raise TopologyMissing("no topology configured (VIGIL_TOPOLOGY)")
    topology = load_config_file(path, Topology, "VIGIL_TOPOLOGY")
    alerting = _by_service(await firing_anomalies(ctx.js, ctx.now))
    node = topology.node(args.service)
    told: dict[str, Any] = {"service": args.service, "known": node is not None,
                            "alerting": alerting.get(args.service, [])}  # fmt: skip
    if node is not None:
        told.update(owner=node.owner, runbook=node.runbook)
    neighbours = {
        "depends_on": _reach(args.service, topology.callees, topology, alerting),
        "dependents": _reach(args.service, topology.callers, topology, alerting),
    }
    if node is not None or neighbours["dependents"]:  # known as a dependency of others
        told.update(neighbours)
    told["alerting_services"] = sorted(
        {n["name"] for key in neighbours for n in neighbours[key] if n["alerting"]}
        | ({args.service} if told["alerting"] else set())
    )
    return told


def _reach(
    start: str,
    step: Callable[[str], list[str]],
    topology: Topology,
    alerting: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Breadth first from `start` along `step` (callees or callers), each service once, at
    the depth it is first reached, with `via`: the services one hop nearer that lead to it."""
    depth_of: dict[str, int] = {start: 0}
    via: dict[str, list[str]] = {}
    frontier = [start]
    for depth in range(1, MAX_DEPTH + 1):
        reached: dict[str, list[str]] = {}
        for s in frontier:
            for n in step(s):
                if n not in depth_of:
                    reached.setdefault(n, []).append(s)
        depth_of.update((name, depth) for name in reached)
        via.update(reached)
        frontier = list(reached)
    return [
        _told(name, depth, via[name], topology, alerting)
        for name, depth in depth_of.items()
        if depth
    ]


def _told(
    name: str,
    depth: int,
    via: list[str],
    topology: Topology,
    alerting: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    node = topology.node(name)
    return {"name": name, "depth": depth, "via": via, "known": node is not None,
            "owner": node.owner if node else None, "runbook": node.runbook if node else None,
            "alerting": alerting.get(name, [])}  # fmt: skip


def _by_service(firing: list[FiringAnomaly]) -> dict[str, list[dict[str, Any]]]:
    """Per service, its firing anomalies (the latest MAX_ALERTS_PER_SERVICE)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for anomaly in firing:
        if anomaly.service is None:
            continue
        alerts = grouped.setdefault(anomaly.service, [])
        if len(alerts) < MAX_ALERTS_PER_SERVICE:
            alerts.append({"name": anomaly.name, "severity": anomaly.severity,
                           "starts_at": anomaly.starts_at.isoformat(),
                           "incident_id": anomaly.incident_id})  # fmt: skip
    return grouped


SERVICE_TOPOLOGY = Tool(
    name="service_topology",
    description="Who a service calls (depends_on) and who calls it (dependents), two hops "
    "out, with owner, runbook and which of them are alerting now.",
    args=TopologyArgs,
    run=service_topology,
)
