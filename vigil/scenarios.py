"""Incident scenarios: a folder that replays one incident for `vigil eval` (docs/scenarios.md).

A scenario folder holds `scenario.yaml` (name, window start, duration), `metrics.om` or
`metrics.om.gz` (OpenMetrics, timestamps in seconds inside the window), `alerts.yaml` (the
first entry starts the investigation), `changes.yaml`, `topology.yaml` and `expected.yaml`.
Minutes count from the window's start. Keys and files not named here are ignored, so a
folder can carry notes of its own. `load_scenario` reads and checks one; ScenarioError says,
in one line, which file and which field is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from eventlog.payloads.investigation import Category
from responder.tools.topology import Topology

FILES = ("scenario.yaml", "alerts.yaml", "changes.yaml", "topology.yaml", "expected.yaml")
METRICS = ("metrics.om", "metrics.om.gz")
REQUIRED_LABELS = ("alertname", "service", "severity")
M = TypeVar("M")


class ScenarioError(ValueError):
    """A folder that is not a scenario; the message names the folder, file and field."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ScenarioMeta(_Lenient):
    name: str = Field(min_length=1)
    start: AwareDatetime = Field(description="the window's start (RFC 3339, UTC)")
    duration_minutes: float = Field(gt=0, le=7 * 24 * 60, allow_inf_nan=False)


class ScenarioAlert(_Lenient):
    """An alert as Alertmanager would send it, its times in minutes from the start."""

    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at_minute: float = Field(ge=0, allow_inf_nan=False)
    ends_at_minute: float | None = Field(
        default=None, allow_inf_nan=False, description="null: still firing"
    )
    expr: str | None = Field(default=None, description="the rule's PromQL")

    @field_validator("labels")
    @classmethod
    def _required_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        missing = [k for k in REQUIRED_LABELS if not labels.get(k)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return labels

    @model_validator(mode="after")
    def _check(self) -> ScenarioAlert:
        if self.ends_at_minute is not None and self.ends_at_minute < self.starts_at_minute:
            raise ValueError("ends_at_minute is before starts_at_minute")
        return self


class ScenarioChange(_Lenient):
    at_minute: float = Field(ge=0, allow_inf_nan=False)
    service: str = Field(min_length=1)
    kind: Literal["deploy", "config", "feature_flag"]
    description: str = ""
    version: str | None = None
    key: str | None = None
    value: Any = None

    @model_validator(mode="after")
    def _check(self) -> ScenarioChange:
        if self.version is None and (self.key is None or self.value is None):
            raise ValueError("a change needs a version, or a key and a value")
        return self

    @property
    def ref(self) -> str:
        """What changed, as `ChangeRecorded.ref` tells it: the version, or key=value."""
        return self.version if self.version is not None else f"{self.key}={self.value}"


class Expected(_Lenient):
    root_cause_category: Category
    root_cause_service: str | None = None
    acceptable_top3: list[Category] = Field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    path: Path
    meta: ScenarioMeta
    alerts: list[ScenarioAlert]
    changes: list[ScenarioChange]
    topology: Path
    expected: Expected
    metrics: Path

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def trigger(self) -> ScenarioAlert:
        """The alert that starts the investigation: the first listed."""
        return self.alerts[0]

    @property
    def now(self) -> datetime:
        """The investigation's time: when the trigger began firing."""
        return self.at(self.trigger.starts_at_minute)

    def at(self, minute: float) -> datetime:
        return self.meta.start.astimezone(UTC) + timedelta(minutes=minute)


def find_scenarios(root: Path) -> list[Path]:
    """`root` itself if it is a scenario folder, else its sub-folders that hold any scenario
    file, by name. ScenarioError when there is none."""
    if not root.is_dir():
        raise ScenarioError(f"{root} is not a directory")
    if _looks_like_scenario(root):
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and _looks_like_scenario(p))
    if not found:
        raise ScenarioError(f"no scenario folders in {root} (each holds a scenario.yaml)")
    return found


def _looks_like_scenario(folder: Path) -> bool:
    return any((folder / f).exists() for f in (*FILES, *METRICS))


def load_scenario(folder: Path) -> Scenario:
    """The scenario in `folder`, checked; ScenarioError naming what is wrong."""
    meta = _read(folder, "scenario.yaml", ScenarioMeta)
    if meta.name != folder.name:
        raise ScenarioError(
            f"{folder.name}: scenario.yaml: name is {meta.name!r}, not the folder's name"
        )
    alerts = _read(folder, "alerts.yaml", list[ScenarioAlert])
    if not alerts:
        raise ScenarioError(f"{folder.name}: alerts.yaml: no alerts (the first one starts it)")
    changes = _read(folder, "changes.yaml", list[ScenarioChange], empty=[])
    _read(folder, "topology.yaml", Topology)
    expected = _read(folder, "expected.yaml", Expected)
    present = [folder / m for m in METRICS if (folder / m).exists()]
    if len(present) != 1 or not present[0].is_file():
        what = "both metrics.om and metrics.om.gz" if len(present) > 1 else None
        what = what or (f"{present[0].name} is not a file" if present else None)
        raise ScenarioError(f"{folder.name}: {what or 'no metrics.om or metrics.om.gz'}")
    metrics = present[0]
    scenario = Scenario(folder, meta, alerts, changes, folder / "topology.yaml", expected, metrics)
    ends = scenario.at(meta.duration_minutes)
    if ends > datetime.now(UTC):
        raise ScenarioError(
            f"{folder.name}: scenario.yaml.start: the window ends at {ends.isoformat()}, in "
            "the future; a scenario replays what has happened"
        )
    for i, alert in enumerate(alerts):
        _within(scenario, f"alerts.yaml[{i}]", alert.starts_at_minute, alert.ends_at_minute)
    for i, change in enumerate(changes):
        _within(scenario, f"changes.yaml[{i}]", change.at_minute)
    return scenario


def check_metrics(scenario: Scenario, plain: Path) -> int:
    """The samples of the scenario's metrics (`plain`: its OpenMetrics text, unpacked), each
    checked to lie inside the window; ScenarioError naming the first that does not, or saying
    there are none. Timestamps are seconds (a millisecond one lies far outside)."""
    start = scenario.meta.start.timestamp()
    end = start + scenario.meta.duration_minutes * 60
    file = scenario.metrics.name
    samples = 0
    with plain.open("rb") as text:
        for number, raw in enumerate(text, 1):
            line = raw.split(b" # ", 1)[0].strip()  # without an exemplar
            if not line or line.startswith(b"#"):
                continue
            parts = line.rsplit(b" ", 2)
            try:
                at = float(parts[-1]) if len(parts) == 3 and b"}" not in parts[-1] else None
            except ValueError:
                at = None
            if at is None:
                raise ScenarioError(
                    f"{scenario.name}: {file}: line {number} has no timestamp (seconds)"
                )
            if not start <= at <= end:
                raise ScenarioError(
                    f"{scenario.name}: {file}: line {number}: timestamp {at:g} is outside the "
                    f"window ({start:g} to {end:g}, seconds)"
                )
            samples += 1
    if samples == 0:
        raise ScenarioError(f"{scenario.name}: {file}: no samples")
    return samples


def _within(scenario: Scenario, where: str, *minutes: float | None) -> None:
    for minute in minutes:
        if minute is not None and minute > scenario.meta.duration_minutes:
            raise ScenarioError(
                f"{scenario.name}: {where}: minute {minute:g} is past the window's "
                f"{scenario.meta.duration_minutes:g} minutes"
            )


def _read(folder: Path, file: str, shape: type[M] | Any, empty: Any = None) -> Any:
    path = folder / file
    if path.exists() and not path.is_file():
        raise ScenarioError(f"{folder.name}: {file} is not a file")
    if not path.is_file():
        if empty is not None:
            return empty
        raise ScenarioError(f"{folder.name}: {file} is missing")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise ScenarioError(f"{folder.name}: {file}: not readable YAML: {first}") from None
    if raw is None and empty is not None:
        return empty
    try:
        return TypeAdapter(shape).validate_python(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise ScenarioError(f"{folder.name}: {file}{where}: {message}") from None
