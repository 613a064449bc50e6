"""schemathesis against the app's own OpenAPI schema: every operation, with an operate token,
against a real nats-server and a real projector. No answer is a 5xx; every answer conforms to
the schema (its status is documented, its body has the documented shape).

The app is served by uvicorn in this process, on a thread with its own event loop (the loop
its NATS connection lives on); schemathesis's requests reach it over loopback HTTP. Seeded:
an incident whose plan awaits approval, so commands meet real state, not only 404s.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from eventlog.payloads import RemediationAction
from eventlog.stream import connect, ensure_streams
from responder.saga.proposals import propose
from tests.api.serving import AS_ANA, api_app, projector_serving
from tests.responder.running import anomaly, append
from tests.responder.test_saga_proposals import CATALOG, POLICY
from vigil.app import serve_http
from vigil.broker import EmbeddedNats

EXAMPLES = 20  # per operation and mode: ~12 operations take ~10 s on an idle machine
# A schema-valid request may still be refused for what no schema says (SQL's grammar, the
# incident's state): such refusals are documented 4xx, which status_code_conformance checks.
NOT_CHECKED = [positive_data_acceptance]
RESTART = RemediationAction(action="restart_service", params={"service": "payments"})


class ServedApi:
    """NATS, a projector and the API on a thread's event loop, until `stop`."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="served-api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(30), f"the API did not start: {self.failed!r}"

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.sock.close()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # told by start() or the test
            self.failed = exc
            self.ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = EmbeddedNats(store_dir=self.store / "nats")
        await server.start()
        try:
            nc = await connect(server.url, name="vigil-fuzz")
            js = nc.jetstream()
            await ensure_streams(js)
            await append(js, anomaly("payments"))
            await propose(js, "inc-1", [RESTART], catalog=CATALOG, policy=POLICY, by="m")
            async with projector_serving(nc, self.store / "vigil.duckdb"), api_app(nc) as app:
                await serve_http(app, self.sock, self._stop, on_ready=self.ready.set)
            await nc.close()
        finally:
            await server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    api = ServedApi(tmp_path_factory.mktemp("fuzz"))
    api.start()
    try:
        yield api
    finally:
        api.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx_or_off_its_schema(
    served: ServedApi, mode: GenerationMode
) -> None:
    """Each operation of /openapi.json, EXAMPLES cases each (valid ones, then invalid ones);
    every failure is collected, so one run names them all."""
    schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [o.label for o in operations]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=served.base_url, headers=AS_ANA, excluded_checks=NOT_CHECKED
            )

        try:
            check()
        except Unsatisfiable:  # nothing to make invalid: no parameter, no body
            if mode is not GenerationMode.NEGATIVE:
                failures.append(f"{operation.label}: no valid request could be generated")
        except Exception as exc:  # a failure of this operation: told with all the others
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
