"""The fleet (docker-compose.yml, deploy/compose/, the Dockerfile) checked without a Docker
engine: the file against the Compose Specification's JSON schema, its structure (services,
commands, settings, healthchecks, ports, dependencies, mounts), the settings Vigil's containers
get loaded by Vigil itself with the files they mount, the NATS nodes' configs run as a real
3-node cluster with JetStream, Prometheus's and Alertmanager's configs checked by promtool and
amtool, and the healthcheck commands run against real servers.

tests/data/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec
(Apache-2.0) at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import AsyncIterator, Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import nats.errors
import pytest
import typer
import yaml

from detector.rules import load_rules
from eventlog.stream import connect, ensure_streams
from responder.saga.catalog import load_catalog
from responder.saga.policy import load_policy
from responder.tools.config_file import load_config_file
from responder.tools.signals import load_signals
from responder.tools.topology import Topology
from vigil.broker import nats_server_binary
from vigil.cli import app
from vigil.demo_acts import SHOP_ADMIN
from vigil.settings import Settings
from vigil.shop import SHOP

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = ("api", "projector", "responder", "worker", "saga", "notifier", "detector")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
WITHOUT_HTTP = {"responder", "worker", "saga", "notifier"}  # nothing to check a health on
# What the shell gives `docker compose up` in these tests: the two required tokens.
SHELL = {
    "VIGIL_WEBHOOK_TOKEN": "w" * 40,
    "VIGIL_API_TOKENS": "ci:operate:" + "o" * 40 + ",grafana:read:" + "r" * 40,
}


# -- reading the file as Compose does -----------------------------------------------------------

VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class Missing(Exception):
    """A `${NAME:?message}` whose variable the shell did not set (compose refuses to start)."""


def interpolate(value: Any, shell: dict[str, str]) -> Any:
    """`value` with Compose's interpolation applied to every string: `${NAME}`,
    `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`, `$$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, shell) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, shell) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
        have = shell.get(name)
        unset = not have if op.startswith(":") else have is None
        if not unset:
            return have or ""
        if op.endswith("?"):
            raise Missing(f"{name}: {arg}")
        return arg if op.endswith("-") else ""

    return VARIABLE.sub(one, value)


def container_env(service: str, shell: dict[str, str]) -> dict[str, str]:
    """The environment the service's container gets: a variable listed without a value is the
    shell's when set there, else absent."""
    env = SERVICES[service].get("environment") or {}
    out = {}
    for name, value in env.items():
        if value is None:
            if name in shell:
                out[name] = shell[name]
        else:
            out[name] = str(interpolate(value, shell))
    return out


def mounts(service: str) -> list[tuple[str, str]]:
    """(source, target) of each volume of the service, in the short syntax."""
    return [tuple(v.split(":")[:2]) for v in SERVICES[service].get("volumes", [])]  # type: ignore[misc]


def bind_mounts(service: str) -> dict[str, Path]:
    """Container path -> the repository file mounted there."""
    return {
        target: ROOT / source
        for source, target in mounts(service)
        if source.startswith(("./", "../", "/"))
    }


def in_container(service: str, container_path: str) -> Path:
    """The repository file a container path of the service is, through its bind mounts."""
    binds = bind_mounts(service)
    assert container_path in binds, f"{service}: nothing is mounted at {container_path}"
    return binds[container_path]


def command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def option(args: list[str], name: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE` in `args`."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def published(service: str) -> dict[int, int]:
    """Host port -> container port."""
    out = {}
    for spec in SERVICES[service].get("ports", []):
        host, container = str(spec).split(":")[-2:]
        out[int(host)] = int(container)
    return out


def vigil_settings(monkeypatch: pytest.MonkeyPatch, service: str) -> Settings:
    """Settings as Vigil builds them in the service's container, its mounted files read from
    the repository."""
    env = container_env(service, SHELL)
    for name in list(os.environ):
        if name.startswith("VIGIL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = Settings()
    files = {
        field: in_container(service, str(getattr(cfg, field)))
        for field in ("rules", "topology", "signals", "actions", "policy")
    }
    return cfg.model_copy(update=files)


# -- the file -----------------------------------------------------------------------------------


def test_the_file_is_valid_by_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(interpolate(COMPOSE, SHELL))


def test_the_fleet_has_every_part_the_issue_names() -> None:
    assert set(SERVICES) == {
        *NATS_NODES, "prometheus", "alertmanager", "shop", *ROLES
    }  # fmt: skip
    assert SERVICES["responder"]["deploy"]["replicas"] == 2
    assert SERVICES["worker"]["deploy"]["replicas"] == 2
    for role in ("api", "projector", "saga", "notifier", "detector"):
        assert SERVICES[role].get("deploy", {}).get("replicas", 1) == 1
    # Only the notifier waits to be asked for: it needs a channel (Slack, a webhook) to run.
    assert {name for name in SERVICES if "profiles" in SERVICES[name]} == {"notifier"}
    assert SERVICES["notifier"]["profiles"] == ["notify"]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_its_vigil_command_in_the_one_image(role: str) -> None:
    service = SERVICES[role]
    assert command(role) == [role]
    assert service["image"] == SERVICES["shop"]["image"] == "vigil:local"
    assert service["build"] == SERVICES["shop"]["build"] == "."
    assert service["restart"] == "unless-stopped"


def test_the_shop_is_vigil_shop_on_every_address() -> None:
    args = command("shop")
    assert args[0] == "shop"
    assert option(args, "--host") == "0.0.0.0"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_the_same_settings(role: str) -> None:
    assert SERVICES[role]["environment"] == COMPOSE["x-vigil-env"]


def test_the_settings_name_the_three_nodes_and_three_replicas() -> None:
    env = container_env("api", SHELL)
    assert env["VIGIL_STREAM_REPLICAS"] == "3"
    servers = env["VIGIL_NATS_URL"].split(",")
    assert servers == [f"nats://{node}:4222" for node in NATS_NODES]
    for node in NATS_NODES:  # each is the port its node listens on
        conf = in_container(node, option(command(node), "--config")).read_text()
        assert re.search(r"^listen: 0\.0\.0\.0:4222$", conf, re.M)


def test_every_vigil_variable_is_a_setting() -> None:
    names = set(COMPOSE["x-vigil-env"])
    used = names | set(re.findall(r"\$\{(VIGIL_[A-Z0-9_]+)", COMPOSE_TEXT))
    fields = {f"VIGIL_{name.upper()}" for name in Settings.model_fields}
    assert {n for n in used if n.startswith("VIGIL_")} <= fields
    # The others are what pydantic-ai's providers read.
    assert {n for n in names if not n.startswith("VIGIL_")} == {"OPENAI_API_KEY",
                                                                "ANTHROPIC_API_KEY"}  # fmt: skip


@pytest.mark.parametrize("token", ["VIGIL_WEBHOOK_TOKEN", "VIGIL_API_TOKENS"])
def test_the_fleet_does_not_start_without_its_tokens(token: str) -> None:
    shell = {k: v for k, v in SHELL.items() if k != token}
    with pytest.raises(Missing, match=token):
        interpolate(COMPOSE, shell)
    with pytest.raises(Missing, match=token):  # an empty one neither
        interpolate(COMPOSE, {**shell, token: ""})


def test_an_optional_setting_unset_in_the_shell_is_not_set_at_all() -> None:
    # An empty VIGIL_SLACK_BOT_TOKEN would be a token, "": it must be absent instead.
    assert "VIGIL_SLACK_BOT_TOKEN" not in container_env("notifier", SHELL)
    shell = {**SHELL, "VIGIL_SLACK_BOT_TOKEN": "xoxb-1", "VIGIL_SLACK_CHANNEL": "C0123"}
    env = container_env("notifier", shell)
    assert env["VIGIL_SLACK_BOT_TOKEN"] == "xoxb-1"
    assert env["VIGIL_SLACK_CHANNEL"] == "C0123"


@pytest.mark.parametrize("role", ROLES)
def test_vigil_loads_the_settings_and_the_files_each_container_gets(
    role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = vigil_settings(monkeypatch, role)
    assert cfg.nats_url and len(cfg.nats_url.split(",")) == 3
    assert cfg.stream_replicas == 3
    assert [t.name for t in cfg.api_tokens] == ["ci", "grafana"]
    assert cfg.webhook_token is not None
    assert cfg.http_host == "0.0.0.0"
    catalog = load_catalog(cfg.actions)  # type: ignore[arg-type]
    assert {a.name for a in catalog.actions} == {"rollback_deploy", "deploy_version"}
    policy = load_policy(cfg.policy)
    assert policy.paused is False
    rules = load_rules(cfg.rules)  # type: ignore[arg-type]
    assert [r.name for r in rules.rules] == ["shop-latency-p99"]
    assert load_signals(cfg.signals)["errors"]
    topology = load_config_file(cfg.topology, Topology, "VIGIL_TOPOLOGY")  # type: ignore[arg-type]
    assert {s.name for s in topology.services} == {spec.name for spec in SHOP}
    # The URLs name services of the file, on the ports they listen on.
    assert cfg.prometheus_url == "http://prometheus:9090"
    assert cfg.alertmanager_url == "http://alertmanager:9093"
    assert published("prometheus")[9090] == 9090 and published("alertmanager")[9093] == 9093


def test_the_compose_catalog_is_the_demos_at_the_shops_gateway() -> None:
    base = int(option(command("shop"), "--port"))
    gateway = f"http://shop:{base + len(SHOP)}"
    demo = (ROOT / "deploy" / "demo" / "actions.yaml").read_text()
    ours = (ROOT / "deploy" / "compose" / "actions.yaml").read_text()
    assert SHOP_ADMIN in demo and SHOP_ADMIN not in ours
    assert yaml.safe_load(ours) == yaml.safe_load(demo.replace(SHOP_ADMIN, gateway))
    assert published("shop")[base + len(SHOP)] == base + len(SHOP)  # the gateway, for curl


# -- mounts, ports, healthchecks, dependencies --------------------------------------------------


def test_every_file_mounted_is_in_the_repository_and_every_volume_declared() -> None:
    declared = set(COMPOSE["volumes"])
    for name in SERVICES:
        for source, target in mounts(name):
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts {source}: no such file"
                assert PurePosixPath(target).is_absolute()
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    # One volume per NATS node at its store_dir; the projector's DuckDB file in its own.
    for node in NATS_NODES:
        conf = in_container(node, option(command(node), "--config")).read_text()
        store = re.search(r"store_dir: (\S+)", conf)
        assert store and (node, store.group(1)) in mounts(node)
    data_dir = COMPOSE["x-vigil-env"]["VIGIL_DATA_DIR"]
    assert ("vigil-data", data_dir) in mounts("projector")
    used = [source for name in SERVICES for source, _ in mounts(name)]
    assert all(used.count(volume) == 1 for volume in declared)  # nothing shared by accident


def test_the_ports_people_use_are_published_once() -> None:
    assert published("api") == {8080: int(COMPOSE["x-vigil-env"]["VIGIL_HTTP_PORT"])}
    assert published("nats-1") == {4222: 4222}
    assert published("prometheus") == {9090: 9090}
    assert published("alertmanager") == {9093: 9093}
    hosts = [port for name in SERVICES for port in published(name)]
    assert len(hosts) == len(set(hosts))


def healthcheck_url(service: str) -> str:
    test = SERVICES[service]["healthcheck"]["test"]
    found = re.search(r"https?://[^\s'\"]+", " ".join(test))
    assert found, f"{service}: no URL in its healthcheck {test}"
    return found.group(0)


def test_each_service_that_serves_http_has_a_healthcheck_on_it() -> None:
    port = COMPOSE["x-vigil-env"]["VIGIL_HTTP_PORT"]
    assert healthcheck_url("api") == f"http://127.0.0.1:{port}/readyz"
    assert healthcheck_url("detector") == f"http://127.0.0.1:{port}/metrics"
    assert (
        healthcheck_url("shop") == f"http://127.0.0.1:{option(command('shop'), '--port')}/metrics"
    )
    assert healthcheck_url("prometheus") == "http://127.0.0.1:9090/-/ready"
    assert healthcheck_url("alertmanager") == "http://127.0.0.1:9093/-/ready"
    for node in NATS_NODES:
        conf = in_container(node, option(command(node), "--config")).read_text()
        monitor = re.search(r"^http: 0\.0\.0\.0:(\d+)$", conf, re.M)
        assert monitor and healthcheck_url(node) == f"http://127.0.0.1:{monitor[1]}/healthz"
    assert SERVICES["projector"]["healthcheck"]["test"] == ["CMD", "vigil", "sql", "SELECT 1"]
    for name in WITHOUT_HTTP:
        assert "healthcheck" not in SERVICES[name]


def test_each_part_waits_for_what_it_needs() -> None:
    def waits(service: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in SERVICES[service].get("depends_on", {}).items()}

    nats = dict.fromkeys(NATS_NODES, "service_healthy")
    for role in ROLES:
        assert nats.items() <= waits(role).items(), role
    assert waits("api") == {**nats, "projector": "service_healthy"}
    assert waits("detector") == {**nats, "prometheus": "service_healthy"}
    assert waits("prometheus") == {"shop": "service_healthy"}
    assert waits("alertmanager") == {"api": "service_healthy"}
    for name in SERVICES:  # a healthy dependency has a way to be healthy
        for dep, condition in waits(name).items():
            assert dep in SERVICES
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep}'s health"


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def answering(status: int) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on a free loopback port answering `status` to every GET; its port and
    the paths asked."""
    handler = type("Answer", (_Answer,), {"status": status, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.paths
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("service", ["api", "detector", "shop"])
@pytest.mark.parametrize("status", [200, 503])
def test_the_python_healthchecks_pass_on_200_only(service: str, status: int) -> None:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    url = healthcheck_url(service)
    with answering(status) as (port, paths):
        script = test[3].replace(url, re.sub(r":\d+/", f":{port}/", url, count=1))
        assert script != test[3]
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert (done.returncode == 0) is (status == 200), done.stderr.decode()
    assert paths == [urlsplit(url).path]


# -- the projector's healthcheck, against a real projector --------------------------------------


@contextlib.asynccontextmanager
async def nats_server(tmp_path: Path, *config: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """nats-server with `config` arguments, until the block ends; ready when it says so."""
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(), *config, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(20):
            while "Server is ready" not in (said[-1] if said else ""):
                line = (await proc.stderr.readline()).decode()
                assert line, f"nats-server ended: {said[-5:]}"
                said.append(line)
        drain = asyncio.create_task(proc.stderr.read())  # the pipe never fills up
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        with contextlib.suppress(NameError):
            await drain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def vigil(*args: str, env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(30):
        return await proc.wait()


async def test_the_projectors_healthcheck_passes_once_it_projects(tmp_path: Path) -> None:
    health = SERVICES["projector"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "vigil"]
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env = {**base, "PYTHONPATH": str(ROOT), "VIGIL_NATS_URL": f"nats://127.0.0.1:{port}",
           "VIGIL_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    async with nats_server(tmp_path, "-js", "-sd", str(tmp_path / "nats"), "-a", "127.0.0.1",
                           "-p", str(port)):  # fmt: skip
        assert await vigil(*health[2:], env=env) != 0  # no projector yet: unhealthy
        projector = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vigil", "projector", env=env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert projector.stdout is not None
        try:
            async with asyncio.timeout(30):
                assert b"projecting" in await projector.stdout.readline()
            assert await vigil(*health[2:], env=env) == 0
        finally:
            projector.terminate()
            await projector.wait()


# -- NATS: the three configs make a cluster with JetStream --------------------------------------


def node_config(node: str) -> str:
    return in_container(node, option(command(node), "--config")).read_text()


def test_each_nodes_routes_name_the_two_others_and_jetstream_is_on() -> None:
    names = set()
    for node in NATS_NODES:
        conf = node_config(node)
        names.add(re.search(r"^server_name: (\S+)$", conf, re.M)[1])  # type: ignore[index]
        routes = set(re.findall(r"nats-route://([\w-]+):6222", conf))
        assert routes == set(NATS_NODES) - {node}
        assert re.search(r"^jetstream \{", conf, re.M)
        assert re.search(r"^cluster \{\n\s+name: vigil$", conf, re.M)
        assert re.search(r"listen: 0\.0\.0\.0:6222", conf)
    assert names == set(NATS_NODES)


async def test_the_three_node_configs_run_as_one_cluster_with_jetstream(tmp_path: Path) -> None:
    # The files as they are, with the compose network's addresses made loopback ports.
    ports = {node: {"client": free_port(), "http": free_port(), "route": free_port()}
             for node in NATS_NODES}  # fmt: skip
    files = []
    for node in NATS_NODES:
        conf, p = node_config(node), ports[node]
        for old, new in [
            ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{p['client']}"),
            ("http: 0.0.0.0:8222", f"http: 127.0.0.1:{p['http']}"),
            ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{p['route']}"),
            ("store_dir: /data", f'store_dir: "{tmp_path / node}"'),
            *[(f"nats-route://{other}:6222", f"nats-route://127.0.0.1:{ports[other]['route']}")
              for other in NATS_NODES if other != node],
        ]:  # fmt: skip
            assert conf.count(old) == 1, f"{node}: {old!r} not once in its config"
            conf = conf.replace(old, new)
        path = tmp_path / f"{node}.conf"
        path.write_text(conf)
        files.append(path)
    async with contextlib.AsyncExitStack() as stack:
        for path in files:
            await stack.enter_async_context(nats_server(tmp_path, "--config", str(path)))
        urls = [f"nats://127.0.0.1:{ports[n]['client']}" for n in NATS_NODES]
        nc = await connect(",".join(urls), name="test-compose")
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        # Vigil's streams with 3 replicas: refused until the three nodes elected a leader, so
        # try until the cluster can answer (no event says when it has formed).
        async with asyncio.timeout(30):
            while True:
                try:
                    await ensure_streams(js, replicas=3)
                    break
                except nats.errors.Error:  # JetStream not ready yet (no leader, no peers)
                    await asyncio.sleep(0.2)
        info = await js.stream_info("VIGIL_EVENTS")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.name == "vigil"
        peers = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
        assert peers == set(NATS_NODES)
        async with httpx.AsyncClient(timeout=5) as client:
            for node in NATS_NODES:
                monitor = f"http://127.0.0.1:{ports[node]['http']}"
                varz = (await client.get(f"{monitor}/varz")).json()
                assert varz["server_name"] == node and varz["cluster"]["name"] == "vigil"
                routez = (await client.get(f"{monitor}/routez")).json()
                assert {r["remote_name"] for r in routez["routes"]} == set(NATS_NODES) - {node}
                assert (await client.get(f"{monitor}/healthz")).status_code == 200


# -- Prometheus and Alertmanager ----------------------------------------------------------------


def assembled(service: str, tmp_path: Path) -> Path:
    """The service's mounted files at their container paths under `tmp_path`."""
    for target, source in bind_mounts(service).items():
        path = tmp_path / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
    return tmp_path


def test_promtool_passes_prometheus_config_and_its_rules(tmp_path: Path) -> None:
    config = option(command("prometheus"), "--config.file")
    root = assembled("prometheus", tmp_path)
    done = subprocess.run(["promtool", "check", "config", str(root / config.lstrip("/"))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rules found" in done.stdout + done.stderr


def test_prometheus_scrapes_each_shop_service_by_name_and_vigil() -> None:
    config = yaml.safe_load(
        in_container("prometheus", "/etc/prometheus/prometheus.yml").read_text()
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    base = int(option(command("shop"), "--port"))
    shop = [(c["targets"], c["labels"]) for c in jobs["shop"]["static_configs"]]
    assert shop == [([f"shop:{base + i}"], {"service": s.name}) for i, s in enumerate(SHOP)]
    port = COMPOSE["x-vigil-env"]["VIGIL_HTTP_PORT"]
    vigil_targets = {t for c in jobs["vigil"]["static_configs"] for t in c["targets"]}
    assert vigil_targets == {f"api:{port}", f"detector:{port}"}
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == [f"alertmanager:{published('alertmanager')[9093]}"]


def test_amtool_passes_alertmanager_config_and_it_sends_the_webhook_token(tmp_path: Path) -> None:
    config = option(command("alertmanager"), "--config.file")
    root = assembled("alertmanager", tmp_path)
    done = subprocess.run(["amtool", "check-config", str(root / config.lstrip("/"))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    receiver = yaml.safe_load(in_container("alertmanager", config).read_text())["receivers"][0]
    webhook = receiver["webhook_configs"][0]
    port = COMPOSE["x-vigil-env"]["VIGIL_HTTP_PORT"]
    assert webhook["url"] == f"http://api:{port}/webhooks/alertmanager"
    assert webhook["send_resolved"] is True
    # The token is VIGIL_WEBHOOK_TOKEN, as a compose secret mounted under /run/secrets.
    auth = webhook["http_config"]["authorization"]
    (secret,) = SERVICES["alertmanager"]["secrets"]
    assert auth == {"type": "Bearer", "credentials_file": f"/run/secrets/{secret}"}
    assert COMPOSE["secrets"][secret] == {"environment": "VIGIL_WEBHOOK_TOKEN"}


# -- the image ----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_is_slim_python_and_runs_vigil_as_a_user_without_privileges() -> None:
    steps = dockerfile()
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
    assert bases and all(b == "python:3.11-slim" for b in bases)
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    user = users[-1].split(":")[0]
    created = " ".join(args for word, args in steps if word == "RUN")
    assert re.search(rf"useradd\b[^&]*--system[^&]*\s{user}(\s|$)", created)
    assert [json.loads(args) for word, args in steps if word == "ENTRYPOINT"] == [["vigil"]]
    assert "[dev]" not in created and "dev]" not in created  # no dev extras
    # The data dir the projector's volume mounts belongs to that user.
    data_dir = COMPOSE["x-vigil-env"]["VIGIL_DATA_DIR"]
    assert f"chown {user}:{user} {data_dir}" in created


def test_the_image_holds_every_package_and_its_data_files() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in setuptools["packages"]["find"]["include"]]
    copied = {args.split()[0].rstrip("/") for word, args in dockerfile() if word == "COPY"}
    assert set(packages) <= copied
    assert {"pyproject.toml", "README.md"} <= {
        part for word, args in dockerfile() if word == "COPY" for part in args.split()[:-1]
    }
    # pip install . puts only .py files in the wheel unless package-data names the others.
    data = setuptools.get("package-data", {})
    tracked = subprocess.run(["git", "ls-files", *packages], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    for name in tracked:
        if name.endswith(".py") or not (ROOT / name).is_file():
            continue
        package, _, inside = name.partition("/")
        patterns = data.get(package, []) + data.get("*", [])
        assert any(fnmatch(inside, p) for p in patterns), f"{name} would not be in the image"


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", ".vigil", "tests"):
        assert name in ignored
    needed = {args.split()[0].rstrip("/") for word, args in dockerfile() if word == "COPY"
              if not args.startswith("--from")}  # fmt: skip
    for name in needed:
        assert not any(fnmatch(name, pattern) for pattern in ignored if pattern[0] != "#")


# -- what README says of it ---------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize("title", ["First five minutes", "Running a fleet"])
def test_the_readme_names_only_real_settings_commands_and_files(title: str) -> None:
    said = readme_section(title)
    fields = {f"VIGIL_{name.upper()}" for name in Settings.model_fields}
    assert set(re.findall(r"\bVIGIL_[A-Z0-9_]*[A-Z0-9]\b", said)) <= fields
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    named = set(re.findall(r"`vigil ([a-z]+)", said)) | set(re.findall(r"\bvigil ([a-z]+) ", said))
    assert named <= set(group.commands)
    for path in re.findall(r"`((?:deploy|tests)/[\w./-]+)`", said):
        for node in "123" if "nats-N" in path else "N":  # one config per node
            assert (ROOT / path.replace("nats-N", f"nats-{node}")).exists(), path
    if title == "Running a fleet":  # its table of services names each, and nothing else
        firsts = [line.split("|")[1] for line in said.splitlines() if line.startswith("| `")]
        listed = {n for cell in firsts for n in re.findall(r"`([a-z][a-z0-9-]*)`", cell)}
        assert listed == set(SERVICES)
