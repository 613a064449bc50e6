"""The built-in tools, tools of one's own from VIGIL_TOOL_MODULES (really imported), the
example of docs/tools.md run against a real HTTP server, and the sample files of deploy/."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from nats.aio.client import Client as NATS

from responder.tools import ToolModuleError, default_tools, load_tools
from responder.tools.config_file import load_config_file
from responder.tools.signals import DEFAULT_SIGNALS, load_signals
from responder.tools.topology import Topology
from tests.responder.contexts import tool_context

ROOT = Path(__file__).parents[2]
BUILT_IN = {"prometheus_query", "prometheus_range", "recent_changes", "service_signals",
            "service_topology", "related_alerts", "similar_incidents"}  # fmt: skip
MINE = """
from pydantic import BaseModel
from responder.tools import Tool

class Nothing(BaseModel):
    pass

async def hello(ctx, args):
    return {"hello": ctx.incident_id}

TOOLS = [Tool("hello", "says hello", Nothing, hello)]
"""

WriteModule = Callable[[str, str], None]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Writes a module importable by name for the test (and forgotten after it)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, code: str) -> None:
        (tmp_path / f"{name}.py").write_text(code)
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_the_built_in_tools() -> None:
    assert set(default_tools().tools) == BUILT_IN
    assert set(load_tools([]).tools) == BUILT_IN


async def test_a_module_of_ones_own(write_module: WriteModule, nc: NATS) -> None:
    write_module("vigil_tools_mine", MINE)
    registry = load_tools(["vigil_tools_mine"])
    assert set(registry.tools) == BUILT_IN | {"hello"}
    hello = registry.get("hello")
    told = await hello.run(tool_context(nc, datetime.now(UTC), incident_id="inc-3"), hello.args())
    assert told == {"hello": "inc-3"}


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ({}, "tool module 'vigil_tools_x' cannot be imported: ModuleNotFoundError: No module"),
        ({"vigil_tools_x": "raise RuntimeError('no LOGS_URL')"},
         "tool module 'vigil_tools_x' cannot be imported: RuntimeError: no LOGS_URL"),
        ({"vigil_tools_x": "tools = []"}, "tool module 'vigil_tools_x' has no TOOLS"),
        ({"vigil_tools_x": "TOOLS = [print]"},
         "tool module 'vigil_tools_x': TOOLS[0] is a builtin_function_or_method, not a Tool"),
        ({"vigil_tools_x": MINE.replace('"hello"', '"recent_changes"')},
         "tool module 'vigil_tools_x': a tool named 'recent_changes' exists already"),
    ],
)  # fmt: skip
def test_a_module_that_cannot_give_its_tools_is_named(
    write_module: WriteModule, modules: dict[str, str], message: str
) -> None:
    for name, code in modules.items():
        write_module(name, code)
    with pytest.raises(ToolModuleError, match=f"^{re.escape(message)}"):
        load_tools(["vigil_tools_x"])


def test_two_modules_with_one_name(write_module: WriteModule) -> None:
    write_module("vigil_tools_a", MINE)
    write_module("vigil_tools_b", MINE)
    with pytest.raises(ToolModuleError, match="'vigil_tools_b': a tool named 'hello' exists"):
        load_tools(["vigil_tools_a", "vigil_tools_b"])


class LogApi(BaseHTTPRequestHandler):
    """A log store's search API: three error lines, whatever is asked (the asks are kept)."""

    asked: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        LogApi.asked.append(parse_qs(url.query))
        lines = [{"message": "db timeout"}, {"message": "db timeout"}, {"message": "x" * 500}]
        body = json.dumps({"lines": lines}).encode() if url.path == "/api/search" else b"{}"
        self.send_response(200 if url.path == "/api/search" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def log_api() -> Iterator[str]:
    """A real HTTP server on a free loopback port, its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), LogApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def docs_example() -> str:
    text = (ROOT / "docs/tools.md").read_text()
    own = text[text.index("## A tool of your own") :]
    return own.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_example_of_the_docs_runs(
    write_module: WriteModule, monkeypatch: pytest.MonkeyPatch, log_api: str, nc: NATS
) -> None:
    monkeypatch.setenv("LOGS_URL", log_api)
    write_module("vigil_log_tools", docs_example())
    tool = load_tools(["vigil_log_tools"]).get("log_errors")
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    told = await tool.run(tool_context(nc, now), tool.args(service="checkout", minutes=10))
    assert told == {
        "service": "checkout", "from": (now - timedelta(minutes=10)).isoformat(),
        "to": now.isoformat(), "error_lines": 3,
        "top": [{"message": "db timeout", "count": 2}, {"message": "x" * 200, "count": 1}],
    }  # fmt: skip
    assert LogApi.asked[-1]["to"] == [now.isoformat()]  # nothing past now is asked for


def test_the_sample_files_are_valid() -> None:
    signals = load_signals(ROOT / "deploy/signals.yaml")
    assert set(DEFAULT_SIGNALS) < set(signals) and signals["up"].startswith("min(")
    topology = load_config_file(ROOT / "deploy/topology.yaml", Topology, "VIGIL_TOPOLOGY")
    assert topology.callers("checkout") == ["frontend"]
