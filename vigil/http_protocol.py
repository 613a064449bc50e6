"""uvicorn's httptools protocol with a bound on the time a request's headers may take.

uvicorn times out a keep-alive connection between requests, but not one that sends part of
its headers and then nothing: each such connection is held for ever (a slowloris). Here a
request's headers must be complete within `header_timeout` seconds of its first byte (or of
the connection, for one that sends nothing), else the connection is closed. The body has its
own bound in the webhook route (a 408 answer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class BoundedHeadersProtocol(HttpToolsProtocol):
    header_timeout: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def bounded(cls, header_timeout: float) -> type[BoundedHeadersProtocol]:
        """This protocol with its own bound (uvicorn takes a class, not an instance)."""
        return type(cls.__name__, (cls,), {"header_timeout": header_timeout})

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
