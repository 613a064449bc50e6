"""Diagnostic tools the investigator asks for and the workers run: read-only, bounded.

A tool is a name, a description (what the model reads), a pydantic model of its arguments and
an async function of (context, arguments) returning JSON-able data, small enough for a model to
read. `ToolRegistry.register` adds one; see `responder/tools/changes.py` for a short example and
docs/tools.md for a tool of one's own, loaded by `load_tools` from VIGIL_TOOL_MODULES.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import BaseModel

A = TypeVar("A", bound=BaseModel)


@dataclass(frozen=True)
class ToolSettings:
    """What the deployment tells the tools: where Prometheus and Alertmanager answer, and the
    files that describe its services (None: not configured, and the tool says so)."""

    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    topology_file: Path | None = None
    signals_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """What a tool may use. `now` is the investigation's time: a tool never looks past it
    (an evaluation sets it to a past moment). `onset` is when the anomaly began, if known.
    `nc` is the connection `js` runs on, for requests (the read model's SQL service)."""

    incident_id: str
    now: datetime
    onset: datetime | None = None
    js: JetStreamContext
    nc: NATS
    settings: ToolSettings = field(default_factory=ToolSettings)


@dataclass(frozen=True)
class Tool(Generic[A]):
    name: str
    description: str
    args: type[A]
    run: Callable[[ToolContext, A], Awaitable[Any]]


class UnknownTool(LookupError):
    """No tool of that name is registered here."""


class ToolModuleError(ValueError):
    """A module of VIGIL_TOOL_MODULES cannot give its tools; the message names it."""


@dataclass
class ToolRegistry:
    tools: dict[str, Tool[Any]] = field(default_factory=dict)

    def register(self, tool: Tool[Any]) -> Tool[Any]:
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is registered already")
        self.tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool[Any]:
        try:
            return self.tools[name]
        except KeyError:
            known = ", ".join(sorted(self.tools)) or "none"
            raise UnknownTool(f"no tool named {name!r} (known: {known})") from None


def default_tools() -> ToolRegistry:
    """The built-in tools."""
    from responder.tools.alerts import RELATED_ALERTS
    from responder.tools.changes import RECENT_CHANGES
    from responder.tools.prometheus import PROMETHEUS_QUERY, PROMETHEUS_RANGE
    from responder.tools.signals import SERVICE_SIGNALS
    from responder.tools.similar import SIMILAR_INCIDENTS
    from responder.tools.topology import SERVICE_TOPOLOGY

    registry = ToolRegistry()
    for tool in (
        PROMETHEUS_QUERY,
        PROMETHEUS_RANGE,
        RECENT_CHANGES,
        SERVICE_SIGNALS,
        SERVICE_TOPOLOGY,
        RELATED_ALERTS,
        SIMILAR_INCIDENTS,
    ):
        registry.register(tool)
    return registry


def load_tools(modules: list[str]) -> ToolRegistry:
    """The built-in tools and those of `modules` (Python module names, each with a list
    `TOOLS` of `Tool`s); ToolModuleError names the module that cannot give its tools."""
    registry = default_tools()
    for name in modules:
        for tool in _tools_of(name):
            if tool.name in registry.tools:
                raise ToolModuleError(
                    f"tool module {name!r}: a tool named {tool.name!r} exists already; rename it"
                )
            registry.register(tool)
    return registry


def _tools_of(name: str) -> list[Tool[Any]]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # not found, or its own code failed: either way, name it
        raise ToolModuleError(
            f"tool module {name!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from None
    tools = getattr(module, "TOOLS", None)
    if not isinstance(tools, list | tuple):
        raise ToolModuleError(
            f"tool module {name!r} has no TOOLS: define TOOLS = [Tool(...), ...] in it"
        )
    for i, tool in enumerate(tools):
        if not isinstance(tool, Tool):
            raise ToolModuleError(
                f"tool module {name!r}: TOOLS[{i}] is a {type(tool).__name__}, not a Tool"
            )
    return list(tools)
