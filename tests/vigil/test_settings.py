"""Settings: VIGIL_ environment variables, then the YAML file named by VIGIL_CONFIG."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from detector.rules import load_rules
from eventlog.stream import split_servers
from responder.tools import ToolSettings, default_tools
from vigil.app import RoleFailed, tool_settings, worker_tools
from vigil.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no VIGIL_ variable of the environment running the tests."""
    for name in os.environ:
        if name.upper().startswith("VIGIL_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.nats_url is None  # `vigil up` embeds a nats-server
    assert s.nats_port == 0
    assert s.data_dir == Path(".vigil")
    assert s.db_path == Path(".vigil/vigil.duckdb")
    assert s.nats_store_dir == Path(".vigil/nats")
    assert s.http_host == "127.0.0.1"
    assert s.http_port == 8080
    assert s.rules is None  # no default: the detector refuses to start without one


def test_env_vars_map_to_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("VIGIL_NATS_PORT", "4333")
    monkeypatch.setenv("VIGIL_NATS_SYNC_ALWAYS", "true")
    monkeypatch.setenv("VIGIL_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("VIGIL_HTTP_PORT", "9090")
    monkeypatch.setenv("vigil_model", "openai:gpt-4o")  # names are not case-sensitive
    monkeypatch.setenv("VIGIL_PROJECTOR_BATCH", "50")
    monkeypatch.setenv("VIGIL_SQL_TIMEOUT_SECONDS", "2.5")
    s = Settings()
    assert s.nats_url == "nats://10.0.0.1:4222"
    assert s.nats_port == 4333
    assert s.nats_sync_always is True
    assert s.data_dir == tmp_path / "d"
    assert s.db_path == tmp_path / "d" / "vigil.duckdb"
    assert s.nats_store_dir == tmp_path / "d" / "nats"
    assert s.http_port == 9090
    assert s.model == "openai:gpt-4o"
    assert s.projector_batch == 50
    assert s.sql_timeout_seconds == 2.5


def test_several_nats_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "nats://a:4222, tls://b:4222,nats://user:pw@c:4222"
    monkeypatch.setenv("VIGIL_NATS_URL", url)
    s = Settings()
    assert s.nats_url == url
    assert split_servers(s.nats_url) == ["nats://a:4222", "tls://b:4222", "nats://user:pw@c:4222"]


@pytest.mark.parametrize("url", ["", "   "])
def test_blank_nats_url_means_embedded(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("VIGIL_NATS_URL", url)
    assert Settings().nats_url is None


@pytest.mark.parametrize(
    ("url", "culprit"),
    [
        ("localhost:4222", "localhost:4222"),
        ("nats://a:4222,b:4222", "b:4222"),
        ("nats://a:4222, b:4222", "b:4222"),
    ],
)
def test_server_without_scheme_is_rejected(
    monkeypatch: pytest.MonkeyPatch, url: str, culprit: str
) -> None:
    monkeypatch.setenv("VIGIL_NATS_URL", url)
    with pytest.raises(ValidationError) as info:
        Settings()
    (error,) = info.value.errors()
    assert error["loc"] == ("nats_url",)
    assert f"{culprit!r} is not a URL like nats://host:4222" in error["msg"]


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("VIGIL_HTTP_PORT", "notaport", "http_port"),
        ("VIGIL_HTTP_PORT", "65536", "http_port"),
        ("VIGIL_NATS_PORT", "-1", "nats_port"),
        ("VIGIL_STREAM_REPLICAS", "6", "stream_replicas"),
        ("VIGIL_PROJECTOR_BATCH", "0", "projector_batch"),
        ("VIGIL_DUPLICATE_WINDOW_SECONDS", "0", "duplicate_window_seconds"),
    ],
)
def test_bad_values_name_their_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [e["loc"] for e in info.value.errors()] == [(field,)]


def test_yaml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(
        "nats_url: nats://from-file:4222\n"
        "http_port: 8181\n"
        f"data_dir: {tmp_path / 'from-file'}\n"
        "model: anthropic:claude\n"
    )
    monkeypatch.setenv("VIGIL_CONFIG", str(config))
    s = Settings()
    assert s.nats_url == "nats://from-file:4222"
    assert s.http_port == 8181
    assert s.data_dir == tmp_path / "from-file"
    assert s.model == "anthropic:claude"

    monkeypatch.setenv("VIGIL_HTTP_PORT", "9191")
    monkeypatch.setenv("VIGIL_NATS_URL", "nats://from-env:4222")
    s = Settings()
    assert s.http_port == 9191
    assert s.nats_url == "nats://from-env:4222"
    assert s.data_dir == tmp_path / "from-file"  # not overridden: still the file's
    assert s.model == "anthropic:claude"


def test_yaml_values_are_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text("nats_url: localhost:4222\n")
    monkeypatch.setenv("VIGIL_CONFIG", str(config))
    with pytest.raises(ValidationError, match="'localhost:4222' is not a URL"):
        Settings()
    config.write_text("nats_ulr: nats://a:4222\n")  # a typo is an error, not ignored
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [
        (("nats_ulr",), "extra_forbidden")
    ]


def test_empty_yaml_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    defaults = Settings()
    config = tmp_path / "vigil.yaml"
    config.write_text("# nothing set yet\n")
    monkeypatch.setenv("VIGIL_CONFIG", str(config))
    assert Settings() == defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http_port: [\n", "not valid YAML"),
        ("- nats_url\n- http_port\n", "must be a mapping"),
        ("42\n", "must be a mapping"),
    ],
)
def test_unreadable_yaml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(text)
    monkeypatch.setenv("VIGIL_CONFIG", str(config))
    with pytest.raises(ValueError, match=message) as info:
        Settings()
    assert f"VIGIL_CONFIG={config}" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("missing", ["nope.yaml", "a-directory"])
def test_config_file_must_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    path = tmp_path / missing
    monkeypatch.setenv("VIGIL_CONFIG", str(path))
    with pytest.raises(ValueError, match=f"VIGIL_CONFIG={path}: no such file"):
        Settings()


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("name", ["rules", "topology", "signals"])
def test_a_blank_file_means_unset(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"VIGIL_{name.upper()}", value)
    assert getattr(Settings(), name) is None


def test_the_tools_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TOOL_MODULES", " acme.vigil_tools, logs ,")
    monkeypatch.setenv("VIGIL_TOPOLOGY", "/etc/vigil/topology.yaml")
    monkeypatch.setenv("VIGIL_PROMETHEUS_URL", "http://prom:9090")
    s = Settings()
    assert s.tool_modules == ["acme.vigil_tools", "logs"]
    assert tool_settings(s) == ToolSettings(
        prometheus_url="http://prom:9090", topology_file=Path("/etc/vigil/topology.yaml")
    )
    assert Settings(tool_modules=["a"]).tool_modules == ["a"]  # a YAML list as it is
    assert Settings().signals is None and Settings().alertmanager_url is None


def test_a_tool_module_that_cannot_load_stops_the_worker_role() -> None:
    with pytest.raises(RoleFailed, match=r"^tool module 'no_such_tools' cannot be imported: "):
        worker_tools(Settings(tool_modules=["no_such_tools"]))
    with pytest.raises(RoleFailed, match=r"\(VIGIL_TOOL_MODULES\)$"):
        worker_tools(Settings(tool_modules=["no_such_tools"]))


def test_the_sample_config_names_the_sample_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/vigil.yaml sets prometheus_url, so it must name rules the detector can load."""
    root = Path(__file__).parents[2]
    monkeypatch.chdir(root)
    monkeypatch.setenv("VIGIL_CONFIG", "deploy/vigil.yaml")
    s = Settings()
    assert s.prometheus_url and s.rules == Path("deploy/rules.yaml")
    assert load_rules(s.rules).rules
    assert s.topology == Path("deploy/topology.yaml") and s.signals == Path("deploy/signals.yaml")
    assert set(worker_tools(s).tools) == set(default_tools().tools)


def test_api_tokens_from_the_environment_and_their_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "VIGIL_API_TOKENS", "ci:operate:0123456789abcdef0, grafana:read:a:b:cdefabcdef0123"
    )
    tokens = Settings().api_tokens
    assert [(t.name, t.scope, t.token.get_secret_value()) for t in tokens] == [
        ("ci", "operate", "0123456789abcdef0"),
        ("grafana", "read", "a:b:cdefabcdef0123"),  # the token may hold colons
    ]
    for given, fault in [
        ("ci:admin:0123456789abcdef0", "scope 'admin'; use read or operate"),
        ("ci:read:short", "shorter than 16 characters"),
        ("ci:read:0123456789abcdef0,ci:operate:fedcba98765432100", "two API tokens are named 'ci'"),
        ("a:read:0123456789abcdef0,b:operate:0123456789abcdef0", "the same secret"),
    ]:
        monkeypatch.setenv("VIGIL_API_TOKENS", given)
        with pytest.raises(ValidationError, match=fault):
            Settings()
    # A secret pasted without its name and scope is not echoed in the error.
    monkeypatch.setenv("VIGIL_API_TOKENS", "0123456789abcdefSECRET")
    with pytest.raises(ValidationError) as refused:
        Settings()
    said = refused.value.errors()[0]["msg"]  # what `vigil` prints (vigil/cli.py: settings)
    assert "is not name:scope:token" in said and "SECRET" not in said
