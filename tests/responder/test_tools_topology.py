"""service_topology on a real nats-server: the map from a YAML file, two hops each way, and
what is alerting at the investigation's now, rebuilt from the anomalies on the stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from responder.tools.config_file import ConfigFileError
from responder.tools.firing import firing_anomalies
from responder.tools.topology import TopologyArgs, TopologyMissing, service_topology
from tests.responder.anomalies import FIRING, NOW, minutes, publish_story
from tests.responder.contexts import tool_context

TOPOLOGY = """
services:
  - name: frontend
    depends_on: [checkout]
    owner: team-web
  - name: checkout
    depends_on: [payments, inventory]
    owner: team-shop
    runbook: https://runbooks.example/checkout
    tier: 1  # not ours: ignored
  - name: payments
    depends_on: [db]
    owner: team-pay
  - name: inventory
    depends_on: [db]
  - name: db
    depends_on: [disk]
  - name: mobile
    depends_on: [frontend]
"""


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return path


async def topology(nc: NATS, path: Path | None, service: str) -> dict:  # type: ignore[type-arg]
    ctx = tool_context(nc, NOW, topology_file=path)
    return await service_topology(ctx, TopologyArgs(service=service))


async def test_what_fires_at_now(js: JetStreamContext) -> None:
    await publish_story(js)
    firing = await firing_anomalies(js, NOW)
    assert {a.fingerprint for a in firing} == FIRING
    assert [a.starts_at for a in firing] == sorted((a.starts_at for a in firing), reverse=True)
    checkout = next(a for a in firing if a.fingerprint == "c1")
    assert (checkout.name, checkout.service, checkout.severity, checkout.incident_id) == (
        "CheckoutErrors", "checkout", "critical", "inc-c"
    )  # fmt: skip
    # Later, what ended meanwhile is over and what started meanwhile fires.
    later = {a.fingerprint for a in await firing_anomalies(js, minutes(12))}
    assert later == {"c1", "p1", "d2", "w1"}


async def test_two_hops_each_way_with_owners_and_alerting(
    js: JetStreamContext, nc: NATS, topology_file: Path
) -> None:
    await publish_story(js)
    told = await topology(nc, topology_file, "checkout")
    assert (told["known"], told["owner"], told["runbook"]) == (
        True, "team-shop", "https://runbooks.example/checkout"
    )  # fmt: skip
    assert [a["name"] for a in told["alerting"]] == ["CheckoutErrors"]
    down = {n["name"]: n for n in told["depends_on"]}
    up = {n["name"]: n for n in told["dependents"]}
    assert {name: n["depth"] for name, n in down.items()} == {
        "payments": 1, "inventory": 1, "db": 2  # not disk: three hops away
    }  # fmt: skip
    assert {name: n["depth"] for name, n in up.items()} == {"frontend": 1, "mobile": 2}
    assert {name: n["via"] for name, n in down.items()} == {
        "payments": ["checkout"], "inventory": ["checkout"], "db": ["payments", "inventory"]
    }  # fmt: skip
    assert down["payments"]["owner"] == "team-pay" and down["db"]["owner"] is None
    assert down["payments"]["alerting"] == [
        {"name": "PaymentsErrors", "severity": "warning",
         "starts_at": minutes(-10).isoformat(), "incident_id": "inc-p"}
    ]  # fmt: skip
    assert down["inventory"]["alerting"] == []  # resolved before now
    assert [a["name"] for a in down["db"]["alerting"]] == ["ConnErrors"]  # DiskFull: silenced
    assert up["mobile"]["alerting"] == []  # its alert starts after now
    assert told["alerting_services"] == ["checkout", "db", "frontend", "payments"]


async def test_a_service_not_in_the_map(
    js: JetStreamContext, nc: NATS, topology_file: Path
) -> None:
    await publish_story(js)
    ghost = await topology(nc, topology_file, "ghost")
    assert ghost == {
        "service": "ghost", "known": False, "alerting_services": ["ghost"],
        "alerting": [{"name": "GhostAlert", "severity": "warning",
                      "starts_at": minutes(-50).isoformat(), "incident_id": "inc-g"}],
    }  # fmt: skip
    disk = await topology(nc, topology_file, "disk")  # unlisted, but others call it
    assert disk["known"] is False and disk["depends_on"] == []
    assert {n["name"]: n["depth"] for n in disk["dependents"]} == {
        "db": 1, "payments": 2, "inventory": 2
    }  # fmt: skip


async def test_no_topology_configured(nc: NATS) -> None:
    with pytest.raises(TopologyMissing, match=r"^no topology configured \(VIGIL_TOPOLOGY\)$"):
        await topology(nc, None, "checkout")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  - depends_on: [a]\n", "services.0.name: Field required"),
        ("services:\n  - name: a\n    depends_on: b\n",
         "services.0.depends_on: Input should be a valid list"),
        ("services:\n  - name: a\n  - name: a\n", "service 'a' is listed twice"),
        ("servces:\n  - name: a\n", "services: Field required"),
        ("", "services: Field required"),
        ("services: [a\n", "not valid YAML"),
    ],
)  # fmt: skip
async def test_a_wrong_topology_file_is_named_with_the_problem(
    nc: NATS, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as caught:
        await topology(nc, path, "checkout")
    assert str(caught.value).startswith(f"VIGIL_TOPOLOGY={path}: ")
    assert message in str(caught.value)


async def test_a_missing_topology_file(nc: NATS, tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"topology\.yaml: cannot read it: No such file"):
        await topology(nc, tmp_path / "topology.yaml", "checkout")
