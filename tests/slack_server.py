"""A fake Slack on loopback, answering as Slack's Web API does, for the notifier's tests.

respx cannot stand in for Slack here: slack-sdk's WebClient speaks urllib, not httpx, so only
a real HTTP server on 127.0.0.1 sees what it sends. This one (a Starlette app under uvicorn)
answers `chat.postMessage`, `chat.update`, `conversations.history` and
`conversations.replies` in Slack's response shapes (`{"ok": true, ...}`, errors as
`{"ok": false, "error": "..."}` with HTTP 200, a rate limit as HTTP 429 with `Retry-After`),
keeps each channel's messages with their metadata (shown only with `include_all_metadata`,
as Slack does), records every call, and takes scripted failures per method. It also serves
`response_url`s (`/respond/<id>`) and records what is sent to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.loopback import serving

TOKEN = "xoxb-vigil-test-token"
CHANNEL = "C0VIGIL01"
BOT = {"user": "U0VIGILBOT", "bot_id": "B0VIGIL01", "app_id": "A0VIGIL01", "team": "T0VIGIL"}


@dataclass(frozen=True)
class Failure:
    """What one scripted call answers instead of the real thing. `then_do`: Slack carried the
    call out, but its answer was lost (a 500 after the message was stored)."""

    status: int
    error: str
    retry_after: float | None = None
    then_do: bool = False


def rate_limited(retry_after: float = 1) -> Failure:
    return Failure(429, "ratelimited", retry_after=retry_after)


def server_error(*, carried_out: bool = False) -> Failure:
    return Failure(500, "internal_error", then_do=carried_out)


def refused(error: str) -> Failure:
    return Failure(200, error)


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    at: float  # time.monotonic()
    answered: Literal["ok", "failed"] = "ok"


@dataclass
class FakeSlack:
    channels: tuple[str, ...] = (CHANNEL,)
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    script: dict[str, list[Failure]] = field(default_factory=lambda: defaultdict(list))
    # Set `hold`: the next chat.postMessage is stored, then waits for it before answering.
    hold: asyncio.Event | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    responded: asyncio.Event = field(default_factory=asyncio.Event)  # a response_url got one
    url: str = ""
    _clock: int = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def fail(self, method: str, *failures: Failure) -> None:
        """The next calls of `method` answer these, in order; then it works again."""
        self.script[method].extend(failures)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def top_level(self, channel: str = CHANNEL) -> list[dict[str, Any]]:
        """The channel's messages that are not replies, oldest first."""
        return [m for m in self.messages[channel] if m.get("thread_ts", m["ts"]) == m["ts"]]

    def thread(self, ts: str, channel: str = CHANNEL) -> list[dict[str, Any]]:
        """The replies in the thread of `ts`, oldest first."""
        return [m for m in self.messages[channel] if m.get("thread_ts") == ts and m["ts"] != ts]

    def message(self, ts: str, channel: str = CHANNEL) -> dict[str, Any]:
        return next(m for m in self.messages[channel] if m["ts"] == ts)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeSlack]:
        app = Starlette(routes=[
            Route("/api/{method}", self._api, methods=["GET", "POST"]),
            Route("/respond/{key}", self._respond, methods=["POST"]),
        ])  # fmt: skip
        async with serving(app) as url:
            self.url = url
            yield self

    # -- the Web API ------------------------------------------------------------------------

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        args = await _args(request)
        call = Call(method, args, time.monotonic())
        self.calls.append(call)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return _answer({"ok": False, "error": "invalid_auth"})
        script = self.script.get(method)
        failure = script.pop(0) if script else None
        if failure is not None and not failure.then_do:
            call.answered = "failed"
            return _failure(failure)
        handler = {
            "chat.postMessage": self._post, "chat.update": self._update,
            "conversations.history": self._history, "conversations.replies": self._replies,
        }.get(method)  # fmt: skip
        if handler is None:
            return _answer({"ok": False, "error": "unknown_method"})
        answer = await handler(args)
        if failure is not None:  # carried out, but the answer is lost
            call.answered = "failed"
            return _failure(failure)
        return _answer(answer)

    async def _post(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        self._clock = max(self._clock + 1, int(time.time() * 1_000_000))  # unique, rising
        ts = f"{self._clock // 1_000_000}.{self._clock % 1_000_000:06d}"
        message = {"type": "message", **BOT, "text": args.get("text", ""), "ts": ts,
                   "blocks": _json(args.get("blocks")) or []}  # fmt: skip
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
            parent = self.message(args["thread_ts"], channel)
            parent["thread_ts"] = parent["ts"]
            parent["reply_count"] = parent.get("reply_count", 0) + 1
        if args.get("metadata"):
            message["metadata"] = _json(args["metadata"])
        self.messages[channel].append(message)
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        return {"ok": True, "channel": channel, "ts": ts, "message": _shown(message, False)}

    async def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), args.get("ts", "")
        found = [m for m in self.messages.get(channel, []) if m["ts"] == ts]
        if not found:
            return {"ok": False, "error": "message_not_found"}
        found[0]["text"] = args.get("text", "")
        found[0]["blocks"] = _json(args.get("blocks")) or []
        found[0]["edited"] = {"user": BOT["user"], "ts": f"{time.time():.6f}"}
        return {"ok": True, "channel": channel, "ts": ts, "text": found[0]["text"],
                "message": _shown(found[0], False)}  # fmt: skip

    async def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(args.get("oldest") or 0)
        listed = [m for m in reversed(self.top_level(channel)) if float(m["ts"]) > oldest]
        return self._page(listed, args, pin_count=0)

    async def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), args.get("ts", "")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        parent = [m for m in self.messages[channel] if m["ts"] == ts]
        if not parent:
            return {"ok": False, "error": "thread_not_found"}
        return self._page(parent + self.thread(ts, channel), args)

    def _page(self, listed: list[dict[str, Any]], args: dict[str, Any], **extra: Any) -> dict:
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 100)
        page = listed[start : start + limit]
        more = start + limit < len(listed)
        metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        cursor = str(start + limit) if more else ""
        return {"ok": True, "messages": [_shown(m, metadata) for m in page], "has_more": more,
                **extra, "response_metadata": {"next_cursor": cursor}}  # fmt: skip

    async def _respond(self, request: Request) -> Response:
        self.responses[request.path_params["key"]].append(await request.json())
        self.responded.set()
        return Response("ok", media_type="text/plain")


async def _args(request: Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    if not body:
        return args
    if request.headers.get("content-type", "").startswith("application/json"):
        args.update(orjson.loads(body))
    else:
        args.update(dict(parse_qsl(body.decode())))  # urlencoded, as slack-sdk sends params
    return args


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def _shown(message: dict[str, Any], metadata: bool) -> dict[str, Any]:
    return {k: v for k, v in message.items() if metadata or k != "metadata"}


def _answer(body: dict[str, Any]) -> Response:
    return JSONResponse(body)


def _failure(failure: Failure) -> Response:
    headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after else None
    return JSONResponse({"ok": False, "error": failure.error}, status_code=failure.status,
                        headers=headers)  # fmt: skip
