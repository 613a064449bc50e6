"""`service_signals`: a service's golden signals before and after the onset, at one call.

Each signal is a PromQL template with a `{service}` placeholder; the built-in ones follow the
common conventions (DEFAULT_SIGNALS), and VIGIL_SIGNALS names a YAML file that overrides them
or adds more (`signals: {name: template}`; `name: null` drops a built-in one). The service
comes from alert labels, which anyone who can fire an alert writes: it is put into the query
only as an escaped double-quoted label value, and a template is refused unless each of its
placeholders stands inside a double-quoted string.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from responder.tools import Tool, ToolContext
from responder.tools.config_file import load_config_file
from responder.tools.prometheus import PrometheusFailed, query_range
from responder.tools.series import around, auto_step, points_of, slope_per_minute, split_at

PLACEHOLDER = "{service}"
MAX_POINTS = 1000  # per signal: the step grows with the window
# name -> (PromQL template, unit)
DEFAULT_SIGNALS: dict[str, tuple[str, str]] = {
    "traffic": ('sum(rate(http_requests_total{service="{service}"}[5m]))', "requests/s"),
    # `or vector(0)`: a service that never answered 5xx has no such series, and the ratio
    # would be no data instead of 0 (its healthy past would look empty).
    "errors": (
        '(sum(rate(http_requests_total{service="{service}",code=~"5.."}[5m])) or vector(0)) / '
        'sum(rate(http_requests_total{service="{service}"}[5m]))',
        "ratio of requests answered 5xx",
    ),
    "latency_p99": (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(http_request_duration_seconds_bucket{service="{service}"}[5m])))',
        "seconds",
    ),
    "cpu": ('sum(rate(process_cpu_seconds_total{service="{service}"}[5m]))', "cores"),
    "memory": ('sum(process_resident_memory_bytes{service="{service}"})', "bytes resident"),
    "restarts": (
        'sum(increase(kube_pod_container_status_restarts_total{service="{service}"}[10m]))',
        "container restarts in 10m",
    ),
    "up": ('avg(up{service="{service}"})', "share of scrape targets up (min: the worst)"),
}


def check_template(template: str) -> str:
    """The template, or ValueError unless each `{service}` in it is inside "..."."""
    if PLACEHOLDER not in template:
        raise ValueError(f"the template has no {PLACEHOLDER} placeholder")
    quote: str | None = None
    i = 0
    while i < len(template):
        c = template[i]
        if template.startswith(PLACEHOLDER, i) and quote != '"':
            raise ValueError(
                f"{PLACEHOLDER} must stand inside a double-quoted label value, "
                f'as in service="{PLACEHOLDER}"'
            )
        if quote and c == "\\" and quote != "`":
            i += 2  # an escaped character, whatever it is
            continue
        if c in "\"'`":
            quote = None if quote == c else quote or c
        i += 1
    return template


SignalName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
Template = Annotated[str, AfterValidator(check_template)]


class SignalsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt `signals:` is not silently nothing

    signals: dict[SignalName, Template | None] = Field(default_factory=dict)


class SignalsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=256)
    onset: AwareDatetime | None = Field(
        default=None, description="when it began; default: the anomaly's onset, else now"
    )
    before_minutes: float = Field(default=30.0, gt=0, le=24 * 60)


def load_signals(path: Path | None) -> dict[str, str]:
    """The built-in templates, overridden by the file's (or dropped where it says null)."""
    signals = {name: template for name, (template, _) in DEFAULT_SIGNALS.items()}
    if path is not None:
        for name, template in load_config_file(path, SignalsFile, "VIGIL_SIGNALS").signals.items():
            if template is None:
                signals.pop(name, None)
            else:
                signals[name] = template
    return signals


def label_value(service: str) -> str:
    """`service` escaped for a PromQL double-quoted string (PromQL reads Go's escapes, of
    which JSON's are a part): a quote cannot end the string it stands in."""
    return json.dumps(service, ensure_ascii=False)[1:-1]


def render(template: str, service: str) -> str:
    return template.replace(PLACEHOLDER, label_value(service))


async def service_signals(ctx: ToolContext, args: SignalsArgs) -> dict[str, Any]:
    """Each signal's statistics before the onset and from it up to `now`, with its trend."""
    if not ctx.settings.prometheus_url:
        raise PrometheusFailed("no Prometheus configured (VIGIL_PROMETHEUS_URL)")
    templates = load_signals(ctx.settings.signals_file)
    onset = min(args.onset or ctx.onset or ctx.now, ctx.now)
    start = onset - timedelta(minutes=args.before_minutes)
    step = auto_step(start, onset, ctx.now, MAX_POINTS)
    names = list(templates)
    told = await asyncio.gather(
        *(_signal(ctx, name, render(templates[name], args.service), start, onset, step)
          for name in names)
    )  # fmt: skip
    if all("error" in signal for signal in told):  # Prometheus is down, not one query wrong
        raise PrometheusFailed(told[0]["error"])
    return {
        "service": args.service, "from": start.isoformat(), "onset": onset.isoformat(),
        "to": ctx.now.isoformat(), "step_seconds": step,
        "signals": dict(zip(names, told, strict=True)),
    }  # fmt: skip


async def _signal(
    ctx: ToolContext, name: str, query: str, start: datetime, onset: datetime, step: float
) -> dict[str, Any]:
    unit = DEFAULT_SIGNALS[name][1] if name in DEFAULT_SIGNALS else None
    told: dict[str, Any] = {"query": query, "unit": unit}
    try:
        data = await query_range(ctx, query, start, step)
    except PrometheusFailed as exc:  # this signal's failure, not the others'
        return {**told, "error": str(exc)}
    series = [(s["metric"], points_of(s["values"])) for s in data["result"]]
    series = [(labels, points) for labels, points in series if points]
    if not series:
        return {**told, "no_data": True}
    summaries = [(labels, points, around(points, onset)) for labels, points in series]
    summaries.sort(key=lambda s: abs(s[2]["change"] or 0), reverse=True)
    labels, points, summary = summaries[0]
    told.update(summary)
    told["trend"] = {
        "per_minute": slope_per_minute(points),
        "before_per_minute": slope_per_minute(split_at(points, onset)[0]),
    }
    if len(series) > 1:  # a template without an aggregation: the series that moved most
        told.update(labels=labels, total_series=len(series))
    return told


SERVICE_SIGNALS = Tool(
    name="service_signals",
    description="A service's golden signals (traffic, errors, p99 latency, cpu, memory, "
    "restarts, up) before and after the onset: statistics, change and trend per minute.",
    args=SignalsArgs,
    run=service_signals,
)
