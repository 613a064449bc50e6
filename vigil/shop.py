"""The demo shop: a few HTTP services in one process, each on its own loopback port with its own
Prometheus metrics, calling each other as their topology says, and a traffic generator.

Every service answers its routes after calling the services the route needs (a dependency that
answers 5xx, or does not answer, makes it answer 502: failures propagate upstream), and counts
what it answered the way the responder's `service_signals` reads it:

- `http_requests_total{service, code}`: requests answered, by status code;
- `http_request_duration_seconds_bucket{service, le}`: their latency (seconds), a histogram;
- `shop_release{service, version}`: 1 for the release running;
- `up{service}` comes from Prometheus's scrape of each service's `/metrics`.

A service's behaviour is its release's: `POST /admin/deploy {"version": "1.5.0"}` switches to
one of the releases it knows (422 naming the problem otherwise), and rolling back is deploying
the old version the same way. `GET /admin/release` says which one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from vigil.app import serve_http

DEPENDENCY_TIMEOUT = 2.0  # seconds a service waits for a dependency before answering 502


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
        ),
    ),
    ServiceSpec("payments", {"/": ()}, (Release("2.7.1"),)),
    ServiceSpec("search", {"/": ()}, (Release("0.9.0"), Release("0.9.1"))),
)


class DeployRequest(BaseModel):
    """The body of `POST /admin/deploy`."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64)


@dataclass
class Service:
    """One running service: its spec, its release, its metrics and where it listens."""

    spec: ServiceSpec
    sock: socket.socket
    peers: dict[str, str]  # service name -> base URL
    client: httpx.AsyncClient
    rng: random.Random = field(default_factory=random.Random)
    release: Release = field(init=False)
    registry: CollectorRegistry = field(init=False)

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
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def deploy(self, version: str) -> Release:
        """Run `version` from now on; KeyError naming the versions known otherwise."""
        known = {r.version: r for r in self.spec.releases}
        if version not in known:
            raise KeyError(f"{self.name} has no release {version!r}; it has {', '.join(known)}")
        self.running.remove(self.name, self.release.version)
        self.release = known[version]
        self.running.labels(self.name, version).set(1)
        return self.release

    async def handle(self, path: str) -> int:
        """Serve one request of `path`: the status code answered."""
        for dep in self.spec.routes[path]:
            try:
                answer = await self.client.get(self.peers[dep] + "/", timeout=DEPENDENCY_TIMEOUT)
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

        @app.get("/admin/release")
        def release() -> dict[str, str]:
            return {"service": self.name, "version": self.release.version}

        @app.post("/admin/deploy")
        def deploy(body: DeployRequest) -> dict[str, str]:
            try:
                now = self.deploy(body.version)
            except KeyError as exc:
                raise HTTPException(status_code=422, detail=exc.args[0]) from None
            return {"service": self.name, "version": now.version}

        for path in self.spec.routes:
            app.add_api_route(path, self._endpoint(path), methods=["GET"])
        return app

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
    """The running shop: its services by name."""

    services: dict[str, Service]

    def targets(self) -> dict[str, str]:
        """Each service's `host:port`, as a Prometheus scrape target."""
        return {name: s.url.removeprefix("http://") for name, s in self.services.items()}


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_shop(
    specs: tuple[ServiceSpec, ...] = SHOP, *, seed: int | None = None
) -> AsyncIterator[Shop]:
    """Every service of `specs` serving on a free loopback port while the block runs."""
    socks = [_listen() for _ in specs]
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
        try:
            for service in services.values():
                ready = asyncio.Event()
                serving.append(
                    asyncio.create_task(
                        serve_http(service.app(), service.sock, stop, on_ready=ready.set, grace=1)
                    )
                )
                await ready.wait()
            yield Shop(services)
        finally:
            stop.set()
            await asyncio.gather(*serving, return_exceptions=True)
            for sock in socks:
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
