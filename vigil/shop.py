"""The demo shop: a few HTTP services in one process, each on its own loopback port with its own
Prometheus metrics, calling each other as their topology says, and a traffic generator.

Every service answers its routes after calling the services the route needs (a dependency that
answers 5xx, or does not answer, makes it answer 502: failures propagate upstream), and counts
what it answered the way the responder's `service_signals` reads it:

- `http_requests_total{service, code}`: requests answered, by status code;
- `http_request_duration_seconds_bucket{service, le}`: their latency (seconds), a histogram;
- `shop_release{service, version}`: 1 for the release running;
- `up{service}` comes from Prometheus's scrape of each service's `/metrics`.

A service's behaviour is its release's and its config's. Its admin endpoints change them:

- `POST /admin/deploy {"version": "1.5.0"}` runs one of the releases it knows (422 naming the
  problem otherwise); `POST /admin/rollback` runs again the version it ran before the current
  one (409 when there is none). Both answer `{"service", "previous", "now"}`: the version
  replaced and the one running now. `GET /admin/release` says which one runs.
- `POST /admin/config {"dependency_timeout_seconds": 2.0}`: how long it waits for a service
  it calls before answering 502. A config is not a release: deploys and rollbacks keep it.
- Changes honour an `Idempotency-Key` header, as an idempotency-keyed API does (Stripe's): the
  same key again answers the first answer, status and body, and changes nothing;
  `GET /admin/requests/{key}` replays the key's answer (404 for a key never seen). A request
  refused before it is read (a body that is not valid) is not kept under its key.

Each service's admin endpoints are also served on one address, the shop's admin gateway, under
`/services/<name>/admin/...`: one URL template (`{service}`) reaches every service.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from vigil.app import serve_http

DEPENDENCY_TIMEOUT = 2.0  # seconds a service waits for a dependency before answering 502
KEY = Header(alias="Idempotency-Key", min_length=1, max_length=200)
IdempotencyKey = Annotated[str | None, KEY]


@dataclass(frozen=True)
class Release:
    """How a version of a service behaves: `error_ratio` of its requests (0..1) answer 500,
    and each takes `extra_latency` seconds more than the service's base latency."""

    version: str
    error_ratio: float = 0.0
    extra_latency: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class ServiceSpec:
    """A service: `routes` maps a path to the services it calls (each at `/`, in order);
    `latency` is its own work per request, seconds (uniform in that range); `releases`, the
    versions it can run, the first one running at start."""

    name: str
    routes: dict[str, tuple[str, ...]]
    releases: tuple[Release, ...]
    latency: tuple[float, float] = (0.004, 0.012)

    @property
    def calls(self) -> tuple[str, ...]:
        """Every service it calls, once each, in the order first named."""
        return tuple(dict.fromkeys(dep for deps in self.routes.values() for dep in deps))


# frontend -> checkout -> payments carries the orders; search is off that path.
SHOP: tuple[ServiceSpec, ...] = (
    ServiceSpec("frontend", {"/browse": ("search",), "/buy": ("checkout",)}, (Release("3.2.0"),)),
    ServiceSpec(
        "checkout",
        {"/": ("payments",)},
        (
            Release("1.4.0"),
            Release(
                "1.5.0",
                error_ratio=0.4,
                extra_latency=0.25,
                note="a new order validation that times out on its cache and fails",
            ),
            Release("1.5.1", note="1.5.0's order validation, its cache timeout fixed"),
        ),
    ),
    ServiceSpec("payments", {"/": ()}, (Release("2.7.1"),)),
    ServiceSpec("search", {"/": ()}, (Release("0.9.0"), Release("0.9.1"), Release("0.9.2"))),
)


class DeployRequest(BaseModel):
    """The body of `POST /admin/deploy`."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64)


class RollbackRequest(BaseModel):
    """The body of `POST /admin/rollback`: none, or an empty object."""

    model_config = ConfigDict(extra="forbid")


class ConfigRequest(BaseModel):
    """The body of `POST /admin/config`."""

    model_config = ConfigDict(extra="forbid")

    dependency_timeout_seconds: float = Field(gt=0, le=60)


class Refused(Exception):
    """An admin change the service will not make: its status code and why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Service:
    """One running service: its spec, its release and config, its metrics and where it
    listens; the versions it ran before (the last, the one before the current) and the
    answer to each idempotency key it was sent."""

    spec: ServiceSpec
    sock: socket.socket
    peers: dict[str, str]  # service name -> base URL
    client: httpx.AsyncClient
    rng: random.Random = field(default_factory=random.Random)
    dependency_timeout: float = DEPENDENCY_TIMEOUT
    release: Release = field(init=False)
    registry: CollectorRegistry = field(init=False)
    history: list[str] = field(default_factory=list)
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.release = self.spec.releases[0]
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "Requests answered, by status code", ["service", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds", "Time to answer a request", ["service"],
            registry=self.registry,
        )  # fmt: skip
        self.running = Gauge(
            "shop_release", "1 for the release the service runs", ["service", "version"],
            registry=self.registry,
        )  # fmt: skip
        self.running.labels(self.spec.name, self.release.version).set(1)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return _url(self.sock)

    def deploy(self, version: str) -> dict[str, Any]:
        """Run `version` from now on; Refused (422) naming the versions known otherwise."""
        known = {r.version: r for r in self.spec.releases}
        if version not in known:
            raise Refused(422, f"{self.name} has no release {version!r}; it has {', '.join(known)}")
        previous = self._run(known[version])
        self.history.append(previous)
        return {"service": self.name, "previous": previous, "now": version}

    def rollback(self) -> dict[str, Any]:
        """Run again the version run before the current one; Refused (409) when none was."""
        if not self.history:
            raise Refused(409, f"{self.name} ran no version before {self.release.version}: "
                               "nothing to roll back to")  # fmt: skip
        version = self.history.pop()
        previous = self._run(next(r for r in self.spec.releases if r.version == version))
        return {"service": self.name, "previous": previous, "now": version}

    def configure(self, config: ConfigRequest) -> dict[str, Any]:
        self.dependency_timeout = config.dependency_timeout_seconds
        return {"service": self.name, "dependency_timeout_seconds": self.dependency_timeout}

    def _run(self, release: Release) -> str:
        """Switch to `release`; the version it replaced."""
        previous = self.release.version
        self.running.remove(self.name, previous)
        self.release = release
        self.running.labels(self.name, release.version).set(1)
        return previous

    def once(self, key: str | None, change: Callable[[], dict[str, Any]]) -> JSONResponse:
        """`change` made and answered, or, for a key seen before, its first answer again.
        Called on the event loop with nothing awaited: two requests of one key cannot both
        make the change."""
        if key is not None and key in self.answers:
            status, body = self.answers[key]
            return JSONResponse(body, status_code=status)
        try:
            status, body = 200, change()
        except Refused as exc:
            status, body = exc.status, {"detail": exc.detail}
        if key is not None:
            self.answers[key] = (status, body)
        return JSONResponse(body, status_code=status)

    async def handle(self, path: str) -> int:
        """Serve one request of `path`: the status code answered."""
        wait = self.dependency_timeout
        for dep in self.spec.routes[path]:
            try:
                answer = await self.client.get(self.peers[dep] + "/", timeout=wait)
            except httpx.HTTPError:
                return 502
            if answer.status_code >= 500:
                return 502
        low, high = self.spec.latency
        await asyncio.sleep(self.rng.uniform(low, high) + self.release.extra_latency)  # its work
        return 500 if self.rng.random() < self.release.error_ratio else 200

    def app(self) -> FastAPI:
        app = FastAPI(title=f"demo shop: {self.name}", docs_url=None, redoc_url=None)

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        app.include_router(self.admin(), prefix="/admin")
        for path in self.spec.routes:
            app.add_api_route(path, self._endpoint(path), methods=["GET"])
        return app

    def admin(self) -> APIRouter:
        """The admin endpoints (see the module's docstring). Async: each runs on the event
        loop, which is what makes `once` safe."""
        router = APIRouter()

        @router.get("/release")
        async def release() -> dict[str, str]:
            return {"service": self.name, "version": self.release.version}

        @router.post("/deploy")
        async def deploy(body: DeployRequest, key: IdempotencyKey = None) -> JSONResponse:
            return self.once(key, lambda: self.deploy(body.version))

        @router.post("/rollback")
        async def rollback(
            body: RollbackRequest | None = None, key: IdempotencyKey = None
        ) -> JSONResponse:
            return self.once(key, self.rollback)

        @router.get("/config")
        async def config() -> dict[str, Any]:
            return {"service": self.name, "dependency_timeout_seconds": self.dependency_timeout}

        @router.post("/config")
        async def configure(body: ConfigRequest, key: IdempotencyKey = None) -> JSONResponse:
            return self.once(key, lambda: self.configure(body))

        @router.get("/requests/{key}")
        async def request(key: str) -> JSONResponse:
            if key not in self.answers:
                detail = f"{self.name} was sent no request with Idempotency-Key {key!r}"
                return JSONResponse({"detail": detail}, status_code=404)
            status, body = self.answers[key]
            return JSONResponse(body, status_code=status)

        return router

    def _endpoint(self, path: str) -> Callable[[Request], object]:
        async def serve(request: Request) -> Response:
            started = time.perf_counter()
            code = await self.handle(path)
            self.latency.labels(self.name).observe(time.perf_counter() - started)
            self.requests.labels(self.name, str(code)).inc()
            return Response(status_code=code)

        return serve


@dataclass
class Shop:
    """The running shop: its services by name, and the admin gateway's URL."""

    services: dict[str, Service]
    admin_url: str

    def targets(self) -> dict[str, str]:
        """Each service's `host:port`, as a Prometheus scrape target."""
        return {name: s.url.removeprefix("http://") for name, s in self.services.items()}


def admin_gateway(services: dict[str, Service]) -> FastAPI:
    """Every service's admin endpoints under `/services/<name>/admin/...`, on one address."""
    app = FastAPI(title="demo shop: admin gateway", docs_url=None, redoc_url=None)
    for service in services.values():
        app.include_router(service.admin(), prefix=f"/services/{service.name}/admin")
    return app


def _url(sock: socket.socket) -> str:
    """Where `sock` is reached from this host: a socket on every address (in a container)
    through loopback."""
    host, port = sock.getsockname()[:2]
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_shop(
    specs: tuple[ServiceSpec, ...] = SHOP,
    *,
    seed: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[Shop]:
    """Every service of `specs` serving while the block runs, and the admin gateway: each on a
    free port of `host`, or with `port` on `port`, `port + 1`, ... in the order of `specs`,
    the gateway last (OSError when one is taken)."""
    socks: list[socket.socket] = []
    try:
        for i in range(len(specs) + 1):
            socks.append(_listen(host, port + i if port else 0))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    socks, gateway = socks[:-1], socks[-1]
    stop = asyncio.Event()
    # Many connections per peer: under a slow release requests pile up rather than queue.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits) as client:
        rng = random.Random(seed)
        services = {
            spec.name: Service(spec, sock, {}, client, random.Random(rng.random()))
            for spec, sock in zip(specs, socks, strict=True)
        }
        for service in services.values():
            service.peers = {dep: services[dep].url for dep in service.spec.calls}
        serving: list[asyncio.Task[None]] = []
        apps = [(s.app(), s.sock) for s in services.values()]
        try:
            for app, sock in [*apps, (admin_gateway(services), gateway)]:
                ready = asyncio.Event()
                serving.append(
                    asyncio.create_task(serve_http(app, sock, stop, on_ready=ready.set, grace=1))
                )
                await ready.wait()
            yield Shop(services, _url(gateway))
        finally:
            stop.set()
            await asyncio.gather(*serving, return_exceptions=True)
            for sock in [*socks, gateway]:
                sock.close()


async def generate_traffic(
    frontend: str,
    stop: asyncio.Event,
    *,
    rate: float = 20.0,
    mix: tuple[tuple[str, float], ...] = (("/browse", 0.6), ("/buy", 0.4)),
    seed: int | None = None,
) -> None:
    """Requests to the frontend at `rate` per second (paths drawn by `mix`'s weights) until
    `stop`; they do not wait for each other, so a slow release does not slow the traffic."""
    rng = random.Random(seed)
    paths, weights = zip(*mix, strict=True)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, path: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # a failed request is the shop's story
            await client.get(frontend + path, timeout=DEPENDENCY_TIMEOUT * 2)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            task = asyncio.create_task(one(client, rng.choices(paths, weights)[0]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            next_at += 1 / rate
            # Pacing, not synchronisation: the traffic has a rate.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        for task in list(in_flight):
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
