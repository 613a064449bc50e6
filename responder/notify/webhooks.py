"""Notifications without a thread: a generic JSON webhook, and a Slack incoming webhook.

Each milestone is one POST. The generic one carries `Idempotency-Key: <milestone event id>`,
so a receiver that honours it can drop the second copy a retry after a lost answer sends;
Slack's incoming webhooks have no such key, so a 5xx or a lost connection retried may show a
message twice (a 429 never does: Slack took nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
from slack_sdk.webhook import WebhookClient
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)


class WebhookRefused(Exception):
    """The receiver answered a 4xx other than 429: sending again cannot help."""


class WebhookBusy(Exception):
    """A 429 or 5xx, or no answer: worth another try after `retry_after` (or a back-off)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def retrying(tries: int, backoff: float, cap: float) -> AsyncRetrying:
    """`tries` in all; a `Retry-After` is honoured up to `cap` seconds, else exponential."""
    exponential = wait_exponential(multiplier=backoff, max=cap)

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, WebhookBusy) and failure.retry_after is not None:
            return min(failure.retry_after, cap)
        return exponential(state)

    return AsyncRetrying(
        stop=stop_after_attempt(tries),
        wait=wait,
        retry=retry_if_exception_type(WebhookBusy),
        reraise=True,
    )


class JsonWebhook:
    """POSTs a milestone's JSON to `url` (with `Authorization: Bearer <token>` if given)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        tries: int = 5,
        backoff: float = 0.5,
        max_wait: float = 30.0,
    ) -> None:
        self.url, self.token, self.timeout = url, token, timeout
        self.tries, self.backoff, self.max_wait = tries, backoff, max_wait

    @property
    def target(self) -> str:
        """Where it goes, as recorded (readable by every read token): the scheme and host
        only, since chat tools (Mattermost, Discord, Teams) keep the secret in the path."""
        url = httpx.URL(self.url)
        return str(url.copy_with(userinfo=b"", path="/", query=None, fragment=None))

    async def send(self, body: dict[str, Any], idempotency_key: str) -> None:
        """Deliver once (retried on 429, 5xx and transport errors); WebhookRefused on a 4xx,
        WebhookBusy when every try failed."""
        headers = {"Idempotency-Key": idempotency_key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            async for attempt in retrying(self.tries, self.backoff, self.max_wait):
                with attempt:
                    await self._post(client, body, headers)

    async def _post(
        self, client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
    ) -> None:
        try:
            response = await client.post(self.url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise WebhookBusy(f"{self.target}: {exc!r}") from None
        _judge(self.target, response.status_code, response.headers.get("retry-after"),
               response.text)  # fmt: skip


class SlackIncomingWebhook:
    """A Slack incoming webhook (slack-sdk's WebhookClient, in a thread): one message each."""

    target = "incoming-webhook"

    def __init__(self, url: str, *, timeout: float = 10.0, tries: int = 5,
                 backoff: float = 0.5, max_wait: float = 30.0) -> None:  # fmt: skip
        self._client = WebhookClient(url, timeout=int(max(timeout, 1)), retry_handlers=[])
        self.tries, self.backoff, self.max_wait = tries, backoff, max_wait

    async def send(self, text: str, blocks: list[dict[str, Any]]) -> None:
        async for attempt in retrying(self.tries, self.backoff, self.max_wait):
            with attempt:
                await self._post(text, blocks)

    async def _post(self, text: str, blocks: list[dict[str, Any]]) -> None:
        send: Callable[[], Any] = lambda: self._client.send(text=text, blocks=blocks)  # noqa: E731
        try:
            response = await asyncio.to_thread(send)
        except OSError as exc:
            raise WebhookBusy(f"Slack incoming webhook: {exc!r}") from None
        retry_after = next(
            (v[0] if isinstance(v, list) else v for k, v in (response.headers or {}).items()
             if k.lower() == "retry-after"),
            None,
        )  # fmt: skip
        _judge("Slack incoming webhook", response.status_code, retry_after, response.body)


def _judge(target: str, status: int, retry_after: str | None, body: str) -> None:
    if status < 300:
        return
    said = " ".join(body.split())[:200]
    if status == 429 or status >= 500:
        wait = None
        if retry_after is not None:
            try:
                wait = max(float(retry_after), 0.0)
            except ValueError:
                wait = None
        raise WebhookBusy(f"{target} answered {status}: {said}", wait)
    raise WebhookRefused(f"{target} answered {status}: {said}")
