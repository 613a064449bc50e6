"""Diagnostic tools the investigator asks for and the workers run: read-only, bounded.

A tool is a name, a description (what the model reads), a pydantic model of its arguments and
an async function of (context, arguments) returning JSON-able data, small enough for a model to
read. `ToolRegistry.register` adds one; see `responder/tools/changes.py` for a short example.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from nats.js import JetStreamContext
from pydantic import BaseModel

A = TypeVar("A", bound=BaseModel)


@dataclass(frozen=True)
class ToolContext:
    """What a tool may use. `now` is the investigation's time: a tool never looks past it
    (an evaluation sets it to a past moment)."""

    incident_id: str
    now: datetime
    js: JetStreamContext
    prometheus_url: str | None = None


@dataclass(frozen=True)
class Tool(Generic[A]):
    name: str
    description: str
    args: type[A]
    run: Callable[[ToolContext, A], Awaitable[Any]]


class UnknownTool(LookupError):
    """No tool of that name is registered here."""


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
    from responder.tools.changes import RECENT_CHANGES
    from responder.tools.prometheus import PROMETHEUS_QUERY, PROMETHEUS_RANGE

    registry = ToolRegistry()
    for tool in (PROMETHEUS_QUERY, PROMETHEUS_RANGE, RECENT_CHANGES):
        registry.register(tool)
    return registry
