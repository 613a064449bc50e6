"""The rules file (`VIGIL_RULES`): which PromQL to poll, how often, and how to judge it.

Every model forbids unknown keys, so a typo (`treshold:`) is an error naming the rule and the
field rather than a detector that silently never fires.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")


def parse_duration(value: Any) -> Any:
    """Prometheus-style `90s`, `5m`, `1h30m`, `2d`; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = DURATION_RE.match(value.strip())
        if m and any(m.groups()):
            d, h, mi, s, ms = (int(g or 0) for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mi, seconds=s, milliseconds=ms)
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h")
    return value


def format_duration(d: timedelta) -> str:
    """A timedelta the way the rules file writes it: 90s -> 1m30s."""
    seconds = int(d.total_seconds())
    parts = (seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m")
    out = "".join(f"{n}{unit}" for n, unit in (*parts, (seconds % 60, "s")) if n)
    return out or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Direction = Literal["above", "below"]
Sides = Literal["above", "below", "both"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ThresholdDetector(_Spec):
    """Breach when the latest value is past a fixed line."""

    kind: Literal["threshold"]
    threshold: float
    direction: Direction = "above"

    @property
    def lookback(self) -> timedelta:
        return timedelta(0)


class _Statistical(_Spec):
    window: Duration = Field(description="history the latest value is compared with")
    z: float = Field(3.0, gt=0, description="how many deviations away is a breach")
    direction: Sides = "both"
    min_delta: float = Field(0.0, ge=0, description="ignore moves smaller than this, absolute")
    min_samples: int = Field(10, ge=3, description="fewer samples of history: no verdict")

    @property
    def lookback(self) -> timedelta:
        return self.window


class ZScoreDetector(_Statistical):
    """Rolling mean and standard deviation of the window."""

    kind: Literal["zscore"]


class RobustZScoreDetector(_Statistical):
    """Median and MAD of the window: one outlier in the history does not blind it."""

    kind: Literal["robust_zscore"]
    z: float = Field(3.5, gt=0)


class EwmaDetector(_Statistical):
    """Exponentially weighted mean and variance: recent history counts more."""

    kind: Literal["ewma"]
    alpha: float = Field(0.3, gt=0, le=1, description="weight of the newest sample")


class ForecastDetector(_Spec):
    """A straight line fitted over the window, extended up to the horizon."""

    kind: Literal["forecast"]
    threshold: float
    direction: Direction = "above"
    window: Duration
    horizon: Duration
    min_samples: int = Field(10, ge=3)

    @property
    def lookback(self) -> timedelta:
        return self.window

    @field_validator("horizon")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return v


DetectorSpec = Annotated[
    ThresholdDetector | ZScoreDetector | RobustZScoreDetector | EwmaDetector | ForecastDetector,
    Field(discriminator="kind"),
]


class Rule(_Spec):
    name: str = Field(min_length=1, max_length=200)
    query: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict, description="service, severity, ...")
    interval: Duration = timedelta(seconds=60)
    step: Duration | None = Field(None, description="range query resolution; the interval")
    for_polls: int = Field(3, ge=1, description="consecutive breaching polls to fire")
    resolve_polls: int = Field(3, ge=1, description="consecutive healthy polls to resolve")
    detector: DetectorSpec

    @property
    def resolution(self) -> timedelta:
        return self.step or self.interval

    @property
    def span(self) -> timedelta:
        """The detector's lookback in whole steps: Prometheus puts range points at start + k *
        step, so only a whole number of steps puts the last one exactly at the poll time."""
        return self.resolution * (self.detector.lookback // self.resolution)

    @field_validator("interval", "step")
    @classmethod
    def _whole_seconds(cls, v: timedelta | None) -> timedelta | None:
        # Prometheus' range API and our evaluation grid both count in whole seconds.
        if v is not None and (v < timedelta(seconds=1) or v.microseconds):
            raise ValueError("must be a whole number of seconds, at least 1s")
        return v

    @model_validator(mode="after")
    def _window_holds_enough(self) -> Rule:
        spec = self.detector
        if isinstance(spec, ThresholdDetector):
            return self
        samples = int(spec.window / self.resolution)
        if samples < spec.min_samples:
            raise ValueError(
                f"detector.window {format_duration(spec.window)} holds {samples} samples at "
                f"step {format_duration(self.resolution)}; detector.min_samples is "
                f"{spec.min_samples}: widen the window or shorten the step"
            )
        return self


class RuleSet(_Spec):
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}: names must be unique")
            seen.add(rule.name)
        return self


class RulesError(ValueError):
    """The rules file cannot be used; the one-line message names the rule and field."""


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate the rules YAML; raises RulesError with a one-line message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RulesError(f"rules file {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise RulesError(f"rules file {path}: not valid YAML{at}") from None
    return parse_rules(raw, origin=f"rules file {path}")


def parse_rules(raw: Any, *, origin: str = "rules") -> RuleSet:
    if not isinstance(raw, dict) or "rules" not in raw:
        raise RulesError(f"{origin}: expected a mapping with a 'rules:' list")
    try:
        return RuleSet.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(f"{origin}: {_describe(exc, raw)}") from None


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """The first few errors on one line, each naming its rule by name and the field as written."""
    errors = exc.errors(include_url=False)
    parts = [_one(err, raw) for err in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _one(err: Any, raw: dict[str, Any]) -> str:
    loc = list(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        rules = raw.get("rules")
        item = rules[index] if isinstance(rules, list) and index < len(rules) else None
        name = item.get("name") if isinstance(item, dict) else None
        who = f"rule {name!r} (rules[{index}])" if name else f"rules[{index}]"
        field = _field_path(loc[2:], item)
        return f"{who}: {field + ': ' if field else ''}{msg}"
    return f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg


def _field_path(loc: list[Any], item: Any) -> str:
    # pydantic puts the union tag in the path (detector.zscore.window); the user wrote
    # detector.window
    spec = item.get("detector") if isinstance(item, dict) else None
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if len(loc) >= 2 and loc[0] == "detector" and loc[1] == kind:
        loc = [loc[0], *loc[2:]]
    return ".".join(str(p) for p in loc)
