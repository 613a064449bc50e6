"""A small OpenAI-compatible chat-completions server on loopback, answering from a script.

The LLM provider is the one third-party service the responder's tests fake, in its real
response shape (`chat.completion` objects, `tool_calls` with JSON-string arguments, usage), so
the real pydantic-ai OpenAI model and its HTTP client are what the investigator talks to.
Each scripted answer is a function of the request body, so a script can read the tool results
the model was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.loopback import serving

Answer = Callable[[dict[str, Any]], Response | dict[str, Any]]


def completion(message: dict[str, Any], finish_reason: str, n: int = 0) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": {"prompt_tokens": 100 + n, "completion_tokens": 20 + n,
                  "total_tokens": 120 + 2 * n},
    }  # fmt: skip


def tool_calls(*calls: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """An assistant message asking for tools: (id, name, arguments)."""
    return completion(
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": cid, "type": "function",
             "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
            for cid, name, args in calls
        ]},
        "tool_calls",
    )  # fmt: skip


def tool_messages(body: dict[str, Any]) -> dict[str, str]:
    """The tool results a request carries, by tool call id (their content, as sent)."""
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


def server_error(status: int = 500) -> Response:
    return JSONResponse({"error": {"message": "the model is overloaded", "type": "server_error"}},
                        status_code=status)  # fmt: skip


def garbage() -> Response:
    return PlainTextResponse("<html>502 Bad Gateway</html>", status_code=200)


class ChatServer:
    """Serves `script` in order (the last answer repeats); `requests` holds each body."""

    def __init__(self, script: list[Answer], *, hang_on: frozenset[int] = frozenset()) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.hang = asyncio.Event()  # set: requests wait forever (a model that never answers)
        self.hang_on = hang_on  # these requests (1-based) wait forever
        self.arrived = asyncio.Condition()
        self.url = ""
        app = FastAPI()
        app.post("/v1/chat/completions")(self._complete)
        self._app = app

    async def _complete(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        async with self.arrived:
            self.requests.append(body)
            n = len(self.requests)
            self.arrived.notify_all()
        if self.hang.is_set() or n in self.hang_on:
            await asyncio.Event().wait()
        answer = self.script[min(n, len(self.script)) - 1](body)
        return answer if isinstance(answer, Response) else JSONResponse(answer)

    async def until_requests(self, n: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= n)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ChatServer]:
        async with serving(self._app) as url:
            self.url = f"{url}/v1"
            yield self
