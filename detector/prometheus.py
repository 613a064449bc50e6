"""Range queries through prometheus-api-client, run in a thread (the client is synchronous).

The client's own retries are switched off: a poll that fails is counted and the next poll is
the retry, so a Prometheus outage costs one bounded request per rule and interval, not a
backoff that delays every other rule. A range query (not an instant one) gives each detector
its history in one request and keeps the detector free of sample buffers, which is what makes
a restart, or a test walking through backfilled data, see exactly what a long run would.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from detector.verdicts import Sample

FailureReason = Literal["unreachable", "timeout", "query_error", "server_error", "bad_response"]
STATUS_RE = re.compile(r"HTTP Status Code (\d+) \((.*)\)$", re.S)


class QueryFailed(Exception):
    """Prometheus did not answer the query with data; `reason` is the metrics label."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    samples: list[Sample]  # oldest first; values may be NaN or +/-Inf


class PrometheusSource:
    """A Prometheus server, asked for ranges of samples."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()  # requests' Session is not safe to share across threads
        self._clients: list[PrometheusConnect] = []

    async def query_range(
        self, query: str, end: datetime, lookback: timedelta, step: timedelta
    ) -> list[Series]:
        """Samples of every series `query` returns on the grid end - lookback .. end."""
        return await asyncio.to_thread(self._query_range, query, end, lookback, step)

    def _client(self) -> PrometheusConnect:
        client: PrometheusConnect | None = getattr(self._local, "client", None)
        if client is None:
            client = PrometheusConnect(self.url, retry=Retry(total=0), timeout=self.timeout)  # type: ignore[arg-type]
            self._local.client = client
            self._clients.append(client)
        return client

    def _query_range(
        self, query: str, end: datetime, lookback: timedelta, step: timedelta
    ) -> list[Series]:
        try:
            raw = self._client().custom_query_range(
                query, end - lookback, end, f"{step.total_seconds():g}s"
            )
        except requests.Timeout:
            raise QueryFailed("timeout", f"no answer within {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            raise QueryFailed("unreachable", f"cannot reach {self.url} ({_root(exc)})") from None
        except PrometheusApiClientException as exc:
            raise _http_failure(str(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:  # 200 with a body that is not the API's
            raise QueryFailed("bad_response", f"{type(exc).__name__}: {exc}") from None
        return parse_matrix(raw)

    def close(self) -> None:
        for client in self._clients:
            client.close()


def parse_matrix(raw: Any) -> list[Series]:
    """The `result` of a range query into series; anything else is a bad response."""
    try:
        return [
            Series(
                labels=dict(item["metric"]),
                samples=[(float(t), float(v)) for t, v in item["values"]],
            )
            for item in raw
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise QueryFailed("bad_response", f"not a range result: {exc!r}") from None


def _http_failure(text: str) -> QueryFailed:
    m = STATUS_RE.match(text)
    if not m:
        return QueryFailed("server_error", text)
    status, body = int(m.group(1)), m.group(2)
    detail = _api_error(body) or f"HTTP {status}"
    # 400: bad PromQL; 422: the query could not run (too many samples, timeout inside)
    return QueryFailed("query_error" if status in (400, 422) else "server_error", detail)


def _api_error(body_repr: str) -> str | None:
    # The client gives the body as repr(bytes); Prometheus' error JSON carries the reason.
    try:
        body = ast.literal_eval(body_repr)
        error = json.loads(body).get("error")
    except (ValueError, TypeError, SyntaxError, AttributeError):
        return None
    return str(error) if error else None


def _root(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return type(exc).__name__


def whole_second(at: datetime) -> datetime:
    """Prometheus' range API takes whole seconds (the client rounds), so evaluation does too."""
    return datetime.fromtimestamp(math.floor(at.timestamp()), UTC)
