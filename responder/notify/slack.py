"""Slack's Web API as the notifier needs it: post a message exactly once, update one.

slack-sdk's sync `WebClient` runs in a thread (its `AsyncWebClient` needs aiohttp, which
Vigil does not otherwise use). Its own retry handlers are off: they would post again after a
500 or a lost connection, and `chat.postMessage` is not idempotent, so the message could
appear twice. Here instead:
- 429 (`ratelimited`, with `Retry-After`): Slack did not take the message; wait what it asks
  (capped) and post again.
- a 5xx, an `internal_error`, a timeout or a lost connection: the message may have been
  posted. Before posting again, look for it in the thread or the channel's history by its
  metadata (the milestone's event id); post only if it is not there.
- any other error (`channel_not_found`, `not_in_channel`, `invalid_auth`, ...) is permanent:
  `SlackRefused`, no retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from responder.notify.blocks import METADATA_EVENT_TYPE, Blocks

log = logging.getLogger(__name__)
# Slack's answers (HTTP 200, ok false) that say "try again later", not "you asked wrong".
TRANSIENT_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
HISTORY_PAGES = 10  # pages of 200 messages looked through for a message posted before a crash
HISTORY_MARGIN = timedelta(minutes=2)  # clocks differ: look this much before the event


class SlackRefused(Exception):
    """Slack refused the call for good (its `error` says why): retrying cannot help."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"Slack refused {method}: {error}")
        self.method, self.error = method, error


class RateLimited(Exception):
    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(f"Slack rate-limited {method}: retry after {retry_after:g}s")
        self.retry_after = retry_after


class Uncertain(Exception):
    """The call failed in a way that may have carried it out (5xx, timeout, lost connection)."""


class SlackApi:
    """One bot token's Web API calls; `tries` per call, a rate limit's wait capped at
    `max_wait` seconds, other waits exponential from `backoff` seconds."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://slack.com/api/",
        timeout: float = 10.0,
        tries: int = 5,
        max_wait: float = 30.0,
        backoff: float = 0.5,
    ) -> None:
        base = base_url if base_url.endswith("/") else base_url + "/"
        self._client = WebClient(token=token, base_url=base, timeout=int(max(timeout, 1)),
                                 retry_handlers=[])  # fmt: skip
        self.tries, self.max_wait, self.backoff = tries, max_wait, backoff

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One Web API call, once: its JSON answer (ok true), or RateLimited, Uncertain or
        SlackRefused."""
        try:
            # slack-sdk's method (chat_postMessage, ...): each sends what Slack expects of it
            # (JSON for writes, query parameters for conversations.history and replies).
            send = getattr(self._client, method.replace(".", "_"))
            response = await asyncio.to_thread(lambda: send(**params))
        except SlackApiError as exc:
            status = exc.response.status_code
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            error = str(data.get("error", f"HTTP {status}"))
            if status == 429 or error == "ratelimited":
                raise RateLimited(method, _retry_after(exc.response.headers)) from None
            if status >= 500 or error in TRANSIENT_ERRORS:
                raise Uncertain(f"{method}: {error} (HTTP {status})") from None
            raise SlackRefused(method, error) from None
        except (URLError, HTTPException, OSError) as exc:  # timeouts are OSErrors too
            raise Uncertain(f"{method}: {exc!r}") from None
        return dict(response.data)  # type: ignore[arg-type]

    async def call_retried(self, method: str, **params: Any) -> dict[str, Any]:
        """`call` retried on a rate limit and on uncertain failures: for calls that are safe
        to repeat (reading history, `chat.update` with the same content)."""
        async for attempt in self._retrying():
            with attempt:
                return await self.call(method, **params)
        raise AssertionError("unreachable: tenacity re-raises")

    async def post_once(
        self,
        channel: str,
        *,
        text: str,
        blocks: Blocks,
        metadata: dict[str, Any],
        thread_ts: str | None,
        since: datetime,
        maybe_posted: bool,
    ) -> tuple[str, str]:
        """Post a message unless it is already there: `(channel id, ts)`. `metadata` names
        the milestone (its `event_payload.milestone_event_id`); with `maybe_posted` (a
        delivery after a crash) or after an uncertain failure, the thread (`thread_ts`) or the
        channel's history since `since` is searched for it first."""
        marker = metadata["event_payload"]["milestone_event_id"]
        look = maybe_posted
        async for attempt in self._retrying():
            with attempt:
                if look:
                    found = await self.find(channel, marker, thread_ts=thread_ts, since=since)
                    if found is not None:
                        log.info("milestone %s was posted before (ts %s): not again", marker,
                                 found[1])  # fmt: skip
                        return found
                try:
                    answer = await self.call(
                        "chat.postMessage", channel=channel, text=text, blocks=blocks,
                        metadata=metadata, thread_ts=thread_ts, unfurl_links=False,
                    )  # fmt: skip
                except Uncertain:
                    look = True  # it may be there now
                    raise
                return str(answer["channel"]), str(answer["ts"])
        raise AssertionError("unreachable: tenacity re-raises")

    async def find(
        self, channel: str, marker: str, *, thread_ts: str | None, since: datetime
    ) -> tuple[str, str] | None:
        """The message whose metadata names `marker`, in the thread or (no thread) in the
        channel's history since `since`: `(channel id, ts)`, or None. A history Slack will
        not show (scope `channels:history` missing) is logged and taken as empty."""
        method = "conversations.replies" if thread_ts else "conversations.history"
        params: dict[str, Any] = {"channel": channel, "include_all_metadata": True, "limit": 200}
        if thread_ts:
            params["ts"] = thread_ts
        else:
            params["oldest"] = f"{(since - HISTORY_MARGIN).timestamp():.6f}"
        for _ in range(HISTORY_PAGES):
            try:
                page = await self.call_retried(method, **params)
            except SlackRefused as exc:
                log.warning("cannot read the channel to avoid a duplicate (%s): posting; give "
                            "the app the scope channels:history", exc)  # fmt: skip
                return None
            for message in page.get("messages", []):
                meta = message.get("metadata") or {}
                payload = meta.get("event_payload") or {}
                if meta.get("event_type") == METADATA_EVENT_TYPE and (
                    payload.get("milestone_event_id") == marker
                ):
                    return str(page.get("channel") or channel), str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            params["cursor"] = cursor
        return None

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.tries),
            wait=_wait(self.backoff, self.max_wait),
            retry=retry_if_exception_type((RateLimited, Uncertain)),
            reraise=True,
        )


def _wait(backoff: float, cap: float) -> Callable[[RetryCallState], float]:
    exponential = wait_exponential(multiplier=backoff, max=cap)

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, RateLimited):
            return min(failure.retry_after, cap)
        return exponential(state)

    return wait


def _retry_after(headers: Any) -> float:
    for key, value in dict(headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(float(raw), 0.0)
            except ValueError:
                break
    return 1.0
