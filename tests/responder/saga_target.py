"""A small deployer on loopback for the saga's tests: it counts the calls it gets per
idempotency key, carries out each key once, and answers what became of a key.

`POST /services/{service}/deploy {"version": v}` deploys v (answering the previous version);
the same key again answers the first answer and changes nothing. Services named in `failing`
refuse with 422. `GET /requests/{key}` replays the key's answer, its status and body (404 for a
key never seen), as an idempotency-keyed API such as Stripe's does.
"""

from __future__ import annotations

import asyncio
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
        self.done: dict[str, tuple[int, dict[str, Any]]] = {}  # per key, its answer
        self.url = ""
        # Set `hold`: a deploy arrives (`arrived` is set) and waits for it to be set.
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        app = FastAPI()
        app.post("/services/{service}/deploy")(self._deploy)
        app.get("/requests/{key}")(self._outcome)
        self._app = app

    async def _deploy(self, service: str, request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key", "")
        self.calls[key] += 1
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        if key not in self.done:
            self.done[key] = await self._carry_out(service, request)
        status, answer = self.done[key]
        return JSONResponse(answer, status_code=status)

    async def _carry_out(self, service: str, request: Request) -> tuple[int, dict[str, Any]]:
        if service in self.failing:
            return 422, {"error": f"{service} refuses the deploy: health check failed"}
        version = (await request.json())["version"]
        answer = {"service": service, "previous": self.versions.get(service), "now": version}
        self.versions[service] = version
        return 200, answer

    async def _outcome(self, key: str) -> JSONResponse:
        if key not in self.done:
            return JSONResponse({"error": "no such request"}, status_code=404)
        status, answer = self.done[key]
        return JSONResponse(answer, status_code=status)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Deployer]:
        async with serving(self._app) as url:
            self.url = url
            yield self


def catalog_for(url: str, *, verify: dict[str, Any] | None = None) -> dict[str, Any]:
    """A catalog (as YAML would give it) whose actions deploy through the Deployer at `url`:
    `set_version` (undone by setting the previous version again), `flip` (whose undo the
    Deployer does not know: it always fails) and `note` (a noop)."""
    service = {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"}
    params = {"type": "object", "properties": {"service": service, "version": {"type": "string"}},
              "required": ["service", "version"], "additionalProperties": False}  # fmt: skip
    http = {"kind": "http", "url": url + "/services/{service}/deploy",
            "body": {"version": "{version}"}, "outcome_url": url + "/requests/{key}"}  # fmt: skip
    undo = {"action": "set_version",
            "params": {"service": "{params.service}", "version": "{output.previous}"}}  # fmt: skip
    scope = {"services": "[a-z][a-z0-9-]*"}
    set_version = {
        "name": "set_version", "description": "deploy a version", "params": params,
        "risk": "low", "executor": http, "compensation": undo, "scope": scope,
    }  # fmt: skip
    if verify is not None:
        set_version["verify"] = verify
    flip = {**set_version, "name": "flip", "description": "flip, undone by unflip",
            "compensation": {"action": "unflip", "params": {"service": "{params.service}",
                                                           "version": "x"}}}  # fmt: skip
    unflip = {**set_version, "name": "unflip", "description": "unknown to the deployer",
              "executor": {**http, "url": url + "/services/{service}/unflip"},
              "compensation": "irreversible"}  # fmt: skip
    note = {
        "name": "note", "description": "a note", "risk": "low",
        "params": {"type": "object", "properties": {"service": service}, "required": ["service"]},
        "executor": {"kind": "noop"}, "compensation": "irreversible", "scope": scope,
    }  # fmt: skip
    return {"actions": [set_version, flip, unflip, note]}
