"""One settings class: environment variables with the VIGIL_ prefix, then an optional YAML file.

The YAML file is named by VIGIL_CONFIG; its keys are the field names (`nats_url: ...`).
Environment variables win over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from api.auth import ApiToken


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="forbid")

    nats_url: str | None = Field(
        default=None,
        description="nats://host:4222, or several comma-separated servers of a cluster; "
        "unset: `vigil up` runs an embedded nats-server",
    )
    nats_port: int = Field(default=0, ge=0, le=65535, description="embedded broker; 0 = free")
    nats_sync_always: bool = Field(
        default=False, description="embedded broker fsyncs every write (slower, see docs)"
    )
    data_dir: Path = Path(".vigil")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 = a free port")
    webhook_token: SecretStr | None = Field(
        default=None,
        description="bearer token Alertmanager sends (http_config.authorization); "
        "unset: the webhook answers 401 to everyone",
    )
    webhook_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    webhook_timeout_seconds: float = Field(
        default=5.0, gt=0, description="NATS slower than this: the webhook answers 503"
    )
    webhook_read_timeout_seconds: float = Field(
        default=30.0, gt=0, description="a request body not all there by then: 408"
    )
    correlation_window_seconds: float = Field(
        default=900.0, ge=0, description="alerts of one service this close join one incident"
    )
    alert_memory_days: float = Field(
        default=30.0, gt=0, description="how long an alert group is remembered after its last"
    )
    prometheus_url: str | None = Field(
        default=None, description="set: `vigil up` runs the detector against it"
    )
    rules: Path | None = Field(
        default=None,
        description="the detector's rules file (sample: deploy/rules.yaml); no default, so a "
        "detector never polls with rules nobody chose",
    )
    alertmanager_url: str | None = Field(
        default=None, description="the tool related_alerts asks it what else is firing"
    )
    topology: Path | None = Field(
        default=None,
        description="services, what each depends on, owner and runbook (sample: "
        "deploy/topology.yaml); for the tool service_topology",
    )
    signals: Path | None = Field(
        default=None,
        description="PromQL templates of the golden signals, overriding or adding to the "
        "built-in ones (sample: deploy/signals.yaml); for the tool service_signals",
    )
    actions: Path | None = Field(
        default=None,
        description="the action catalog: the only things remediation can do (sample: "
        "deploy/actions.yaml)",
    )
    policy: Path | None = Field(
        default=None,
        description="the remediation policy: auto, approval or dry_run per service and risk "
        "(sample: deploy/policy.yaml); unset, every plan waits for approval",
    )
    tool_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated Python modules, each with TOOLS = [Tool(...)]: tools of "
        "your own beside the built-in ones (docs/tools.md)",
    )
    remediation_paused: bool = Field(
        default=False, description="true: no remediation step starts (as `vigil pause`)"
    )
    saga_lease_seconds: float = Field(
        default=6.0, ge=0.5, le=300,
        description="an orchestrator that dies mid-saga: another goes on after this long",
    )  # fmt: skip
    api_tokens: Annotated[list[ApiToken], NoDecode] = Field(
        default_factory=list,
        description="the API's bearer tokens, comma-separated `name:scope:token` (scope read "
        "or operate); in the YAML file a list of {name, scope, token}. None: the API answers "
        "loopback clients only",
    )
    public_url: str | None = Field(
        default=None,
        description="where people reach the API and its page (links in Slack); unset: "
        "http://VIGIL_HTTP_HOST:VIGIL_HTTP_PORT",
    )
    slack_bot_token: SecretStr | None = Field(
        default=None, description="xoxb-...: one Slack thread per incident in VIGIL_SLACK_CHANNEL"
    )
    slack_channel: str | None = Field(default=None, description="channel id (C...) or #name")
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="a Slack incoming webhook: one message per milestone, no thread"
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None, description="verifies Slack's requests to /slack/interactions (buttons)"
    )
    slack_approvers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated Slack user ids (U...) whose approve and reject buttons "
        "count; unset, a click is refused (anyone who sees the channel could act otherwise)",
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/", description="Slack's Web API base (tests: a fake)"
    )
    notify_webhook_url: str | None = Field(
        default=None, description="a generic JSON webhook: one POST per milestone"
    )
    notify_webhook_token: SecretStr | None = Field(
        default=None, description="sent as `Authorization: Bearer` to VIGIL_NOTIFY_WEBHOOK_URL"
    )
    model: str = "builtin"
    stream_replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_seconds: float = Field(default=120.0, gt=0)
    projector_batch: int = Field(default=2000, ge=1, le=10_000)
    sql_timeout_seconds: float = Field(default=30.0, gt=0)
    sql_max_rows: int = Field(default=10_000, ge=1)
    worker_concurrency: int = Field(
        default=16, ge=1, le=1024, description="tool calls one worker process runs at once"
    )
    model_base_url: str | None = Field(
        default=None, description="an OpenAI-compatible server (Ollama, vLLM, LiteLLM)"
    )
    model_api_key: SecretStr | None = None
    responder_enabled: bool = Field(
        default=True, description="false: `vigil up` runs no investigator nor workers"
    )
    responder_concurrency: int = Field(
        default=8, ge=1, le=1024, description="investigation events one responder handles at once"
    )
    investigation_max_model_requests: int = Field(default=12, ge=1, le=1000)
    investigation_max_tool_calls: int = Field(default=40, ge=1, le=10_000)
    investigation_max_tokens: int = Field(default=400_000, ge=1, description="input + output")
    investigation_max_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="an attempt's wall time"
    )
    tool_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="a tool call with no answer by then has failed"
    )

    @field_validator("nats_url")
    @classmethod
    def _servers_are_urls(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for server in value.split(","):
            if "://" not in server.strip():
                raise ValueError(f"{server.strip()!r} is not a URL like nats://host:4222")
        return value

    @field_validator("rules", "topology", "signals", "actions", "policy", mode="before")
    @classmethod
    def _blank_file_is_unset(cls, value: object) -> object:
        # `VIGIL_RULES=` would otherwise be Path("."), a directory, not "no rules file".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("tool_modules", "slack_approvers", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):  # the environment's `a.tools, b.tools`; YAML gives a list
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _token_triples(cls, value: object) -> object:
        if isinstance(value, str):  # the environment's `ci:operate:s3cret, grafana:read:t0k3n`
            return [ApiToken.parse(item) for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_tokens")
    @classmethod
    def _token_names_unique(cls, value: list[ApiToken]) -> list[ApiToken]:
        names = [t.name for t in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two API tokens are named {name!r}; names must be unique")
        secrets = [t.token.get_secret_value() for t in value]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two API tokens have the same secret; each needs its own")
        return value

    @property
    def api_base_url(self) -> str:
        """Where links point: VIGIL_PUBLIC_URL, or this process's own address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "vigil.duckdb"

    @property
    def nats_store_dir(self) -> Path:
        return self.data_dir / "nats"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("VIGIL_CONFIG")
        if config:
            if not Path(config).is_file():
                raise ValueError(f"VIGIL_CONFIG={config}: no such file")
            try:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config))
            except yaml.YAMLError as exc:
                reason = " ".join(str(exc).split())  # one line; the mark says where
                raise ValueError(f"VIGIL_CONFIG={config}: not valid YAML: {reason}") from None
            except (TypeError, ValueError):  # a list or a scalar at the top
                raise ValueError(
                    f"VIGIL_CONFIG={config}: the file must be a mapping of setting: value"
                ) from None
        return tuple(sources)
