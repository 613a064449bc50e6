"""A small deployer on loopback for the saga's tests: it counts the calls it gets per
idempotency key, carries out each key once, and answers what became of a key.

`POST /services/{service}/deploy {"version": v}` deploys v (answering the previous version);
the same key again answers the first answer and changes nothing. Services named in `failing`
answer 500. `GET /requests/{key}`: 200 with the key's answer, 404 for a key never seen.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.loopback import serving


class Deployer:
    def __init__(self, versions: dict[str, str], failing: set[str] | None = None) -> None:
        self.versions = dict(versions)
        self.failing = failing or set()
        self.calls: Counter[str] = Counter()  # per idempotency key, every call
        self.done: dict[str, dict[str, Any]] = {}  # per key, its answer
        self.url = ""
        app = FastAPI()
        app.post("/services/{service}/deploy")(self._deploy)
        app.get("/requests/{key}")(self._outcome)
        self._app = app

    async def _deploy(self, service: str, request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key", "")
        self.calls[key] += 1
        if service in self.failing:
            return JSONResponse({"error": f"{service} refuses"}, status_code=500)
        if key in self.done:
            return JSONResponse(self.done[key])
        version = (await request.json())["version"]
        answer = {"service": service, "previous": self.versions.get(service), "now": version}
        self.versions[service] = version
        self.done[key] = answer
        return JSONResponse(answer)

    async def _outcome(self, key: str) -> JSONResponse:
        if key not in self.done:
            return JSONResponse({"error": "no such request"}, status_code=404)
        return JSONResponse(self.done[key])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Deployer]:
        async with serving(self._app) as url:
            self.url = url
            yield self
