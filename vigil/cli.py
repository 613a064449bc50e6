"""The `vigil` command line: run the service or one role, query it, rebuild it, demo it."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import getpass
import io
import logging
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
import orjson
import typer
from fastapi import FastAPI
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.app import add_metrics
from detector.rules import RulesError, RuleSet, load_rules
from eventlog.envelope import INCIDENT_ID_PATTERN
from eventlog.payloads import InvestigationStarted, RemediationAction
from eventlog.replay import replay
from eventlog.sql import QueryResult, SqlError, run_read_only
from eventlog.sql_service import request_sql
from eventlog.store import open_database
from eventlog.stream import BusUnreachable, connect
from responder.attempts import NoSuchIncident, ask_for_attempt
from vigil.app import (
    HELD_BY_ENV,
    PROJECTOR_READY,
    HttpPortBusy,
    RoleFailed,
    bind_http,
    broker,
    bus,
    investigation_model,
    remediation_config,
    run,
    run_api,
    run_detector_role,
    run_projector,
    run_projector_process,
    run_responder_role,
    run_saga_role,
    run_worker_role,
    serve_http,
    stop_on_signals,
)
from vigil.broker import BrokerError, EmbeddedNats
from vigil.datadir import DataDirBusy, holding
from vigil.runtime import clear_runtime, read_runtime
from vigil.settings import Settings
from vigil.supervisor import Role, Supervisor, run_roles
from vigil.tuning import tune_gc

app = typer.Typer(help="Vigil: incident response from Prometheus alerts, every step an event.")
# soft_wrap: a message is one line even when the output is a pipe (rich would cut it at 80
# columns, in the middle of a path); tables are still laid out to the width.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
Format = Literal["table", "json", "csv"]


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CliError(f"setting VIGIL_{field.upper()}: {first['msg']}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None


def usable_dir(
    path: Path, what: str = "data dir", hint: str = "set VIGIL_DATA_DIR to a writable directory"
) -> None:
    """Create `path` if needed and check it takes files: a one-line error, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".vigil-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"{what} {path} is not usable: {exc.strerror or exc}; {hint}") from None


@app.command()
def up() -> None:
    """Run every role (API, detector, projector child); embedded NATS unless VIGIL_NATS_URL."""
    cfg = settings()
    usable_dir(cfg.data_dir)
    rules = detector_rules(cfg) if cfg.prometheus_url else None
    check_model(cfg)
    if cfg.actions is not None:
        remediation_config(cfg)  # a wrong catalog or policy: one line before anything starts

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        async with broker(cfg) as (url, embedded):

            def announce() -> None:  # every role is ready: NATS, the streams, DuckDB, HTTP
                where = f"embedded, store {cfg.nats_store_dir}" if embedded else "external"
                host, port = sock.getsockname()[:2]
                console.print(f"NATS   {url} ({where})")
                console.print(f"DuckDB {cfg.db_path}")
                console.print(f"HTTP   http://{host}:{port}/webhooks/alertmanager")
                if cfg.responder_enabled:
                    model = f"Model  {cfg.model} (investigations)"
                else:
                    model = "Model  none: VIGIL_RESPONDER_ENABLED=false, no investigations"
                console.print(model, markup=False, emoji=False)
                if cfg.actions is not None:
                    console.print(f"Sagas  actions {cfg.actions}, policy {cfg.policy or 'default'}")
                if cfg.webhook_token is None:
                    err.print("warning: VIGIL_WEBHOOK_TOKEN is not set: the webhook refuses all")
                if rules:
                    n, source = len(rules.rules), cfg.prometheus_url
                    console.print(f"Rules  {n} from {cfg.rules}, polling {source}")
                console.print("vigil is up")

            try:
                await Supervisor(
                    up_roles(cfg, url, sock, stop, rules, embedded), stop, on_up=announce
                ).run()
            finally:  # the projector child clears it too, unless it was killed
                clear_runtime(cfg.data_dir)
        console.print("vigil stopped")

    with holding(cfg.data_dir):
        sock = bind_http(cfg)  # a busy port is a one-line error before anything starts
        try:
            run(main())
        finally:
            sock.close()


def up_roles(
    cfg: Settings,
    url: str,
    sock: socket.socket,
    stop: asyncio.Event,
    rules: RuleSet | None,
    embedded: EmbeddedNats | None,
) -> list[Role]:
    """The roles of `vigil up`, each startable again by its supervisor."""
    roles = [
        Role("projector", lambda ready: run_projector_process(cfg, url, stop, on_ready=ready)),
        Role("api", lambda ready: run_api(cfg, url, sock, stop, on_ready=ready)),
    ]
    if cfg.responder_enabled:
        roles += [
            Role("worker", lambda ready: run_worker_role(cfg, url, stop, on_ready=ready)),
            Role("responder", lambda ready: run_responder_role(cfg, url, stop, on_ready=ready)),
        ]
    if cfg.actions is not None:
        roles.append(Role("saga", lambda ready: run_saga_role(cfg, url, stop, on_ready=ready)))
    if rules:
        roles.append(
            Role("detector", lambda ready: run_detector_role(cfg, url, rules, stop, on_ready=ready))
        )
    if embedded:
        roles.append(Role("nats", lambda ready: embedded.serve(stop, on_ready=ready)))
    return roles


@app.command()
def worker() -> None:
    """Run the tool workers alone against VIGIL_NATS_URL (several processes share the work)."""
    cfg = settings()
    if not cfg.nats_url:
        raise CliError("VIGIL_NATS_URL is required: the workers join an existing NATS")

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        assert cfg.nats_url
        where = cfg.prometheus_url or "no Prometheus (VIGIL_PROMETHEUS_URL unset)"
        await run_worker_role(
            cfg, cfg.nats_url, stop,
            on_ready=lambda: console.print(
                f"working: {cfg.worker_concurrency} tool calls at once; querying {where}"
            ),
        )  # fmt: skip

    run(main())


@app.command()
def responder() -> None:
    """Run the investigator alone against VIGIL_NATS_URL (several processes share the work)."""
    cfg = settings()
    if not cfg.nats_url:
        raise CliError("VIGIL_NATS_URL is required: the responder joins an existing NATS")
    check_model(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        assert cfg.nats_url
        await run_responder_role(
            cfg, cfg.nats_url, stop,
            on_ready=lambda: console.print(  # a model name is not markup (`openai:m` no emoji)
                f"investigating with {cfg.model}: {cfg.responder_concurrency} events at once",
                markup=False, emoji=False,
            ),
        )  # fmt: skip

    run(main())


def check_model(cfg: Settings) -> None:
    try:
        investigation_model(cfg)
    except ValueError as exc:
        raise CliError(str(exc)) from None


@app.command()
def investigate(
    incident_id: Annotated[str, typer.Argument(help="the incident to investigate again")],
    by: Annotated[str | None, typer.Option(help="who asks (recorded); default: you")] = None,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
) -> None:
    """Ask for a new attempt at an incident's investigation (a running responder takes it)."""
    cfg = settings()
    by = by or _user()

    async def main() -> InvestigationStarted:
        nc = await connect(nats_url_of(cfg), name="vigil-investigate")
        try:
            return await ask_for_attempt(
                nc.jetstream(), incident_id, model=cfg.model, by=by, reason=reason
            )
        except NoSuchIncident as exc:
            raise CliError(str(exc)) from None
        finally:
            await nc.close()

    started = run(main())
    console.print(f"incident {incident_id}: attempt {started.attempt} asked for by {by}")


@app.command()
def propose(
    incident_id: Annotated[str, typer.Argument(help="the incident to remediate")],
    action: Annotated[str, typer.Argument(help="an action of the catalog (VIGIL_ACTIONS)")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE, a parameter of the action (a number or true/false where "
            "its schema says so, else a string)"
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
    by: Annotated[str | None, typer.Option(help="who proposes (recorded); default: you")] = None,
) -> None:
    """Propose a one-step remediation plan; refused (and recorded so) outside the catalog."""
    from responder.saga.catalog import ACTION_NAME
    from responder.saga.proposals import propose as record_proposal

    cfg = settings()
    catalog, policy = remediation_config(cfg)
    _check_incident_id(incident_id)
    if not re.fullmatch(ACTION_NAME, action):
        raise CliError(f"action {action!r}: not an action's name (a-z, 0-9, _)")
    known = catalog.get(action)
    types = known.params.get("properties", {}) if known else {}
    params: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--param {item!r}: write KEY=VALUE")
        if key in params:
            raise CliError(f"--param {key}: given twice")
        params[key] = _typed(key, value, types.get(key, {}).get("type"))
    by = by or _user()
    step = RemediationAction(action=action, params=params)

    async def main() -> Any:
        nc = await connect(nats_url_of(cfg), name="vigil-propose")
        try:
            return await record_proposal(
                nc.jetstream(), incident_id, [step], catalog=catalog, policy=policy, by=by,
                rationale=reason,
            )  # fmt: skip
        except NoSuchIncident as exc:
            raise CliError(str(exc)) from None
        finally:
            await nc.close()

    proposal = run(main())
    if proposal.refused is not None:
        raise CliError(f"refused: {proposal.refused.reason} (recorded as {proposal.saga_id})")
    mode = proposal.accepted.mode
    console.print(f"incident {incident_id}: {proposal.saga_id} proposed ({mode})", markup=False)


SAGA_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_incident_id(incident_id: str) -> None:
    if not re.fullmatch(INCIDENT_ID_PATTERN, incident_id):
        raise CliError(f"incident {incident_id!r}: not an incident id (letters, digits, _ and -)")


def _typed(key: str, value: str, kind: Any) -> Any:
    """A --param's text as its schema's type says (`integer`, `number`, `boolean`)."""
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        raise CliError(f"--param {key}={value}: not a {kind}") from None
    if kind == "boolean":
        if value not in ("true", "false"):
            raise CliError(f"--param {key}={value}: write true or false")
        return value == "true"
    return value


@app.command()
def saga() -> None:
    """Run the saga orchestrator alone against VIGIL_NATS_URL (it runs remediation plans)."""
    cfg = settings()
    if not cfg.nats_url:
        raise CliError("VIGIL_NATS_URL is required: the orchestrator joins an existing NATS")
    catalog, _ = remediation_config(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        assert cfg.nats_url
        n, where = len(catalog.actions), cfg.prometheus_url or "no Prometheus: alerts only"
        await run_saga_role(
            cfg, cfg.nats_url, stop,
            on_ready=lambda: console.print(f"orchestrating: {n} actions; verifying by {where}"),
        )  # fmt: skip

    run(main())


def _decide(
    incident_id: str, approve: bool, by: str | None, reason: str, saga_id: str | None
) -> None:
    from responder.saga.policy import load_policy
    from responder.saga.proposals import NotAwaitingApproval, decide
    from responder.tools.config_file import ConfigFileError

    cfg = settings()
    who = by or _user()
    _check_incident_id(incident_id)
    if saga_id is not None and not SAGA_ID.fullmatch(saga_id):
        raise CliError(f"--saga {saga_id!r}: not a saga id (letters, digits, _ and -)")
    try:
        expiry = load_policy(cfg.policy).approval_expiry
    except ConfigFileError as exc:
        raise CliError(str(exc)) from None

    async def main() -> Any:
        nc = await connect(nats_url_of(cfg), name="vigil-decide")
        try:
            return await decide(nc.jetstream(), incident_id, approve=approve, by=who,
                                reason=reason, saga_id=saga_id, expiry=expiry)  # fmt: skip
        except (NoSuchIncident, NotAwaitingApproval) as exc:
            raise CliError(str(exc)) from None
        finally:
            await nc.close()

    decided = run(main())
    verb = "approved" if approve else "rejected"
    console.print(f"incident {incident_id}: {decided.saga_id} {verb} by {who}", markup=False)


SagaOption = Annotated[
    str | None, typer.Option("--saga", help="the plan, when several await approval")
]
ByOption = Annotated[str | None, typer.Option(help="who decides (recorded); default: you")]


@app.command()
def approve(
    incident_id: Annotated[str, typer.Argument(help="the incident whose plan awaits approval")],
    comment: Annotated[str, typer.Option(help="recorded with the approval")] = "",
    by: ByOption = None,
    saga_id: SagaOption = None,
) -> None:
    """Approve the remediation plan that awaits approval; the orchestrator runs it."""
    _decide(incident_id, True, by, comment, saga_id)


@app.command()
def reject(
    incident_id: Annotated[str, typer.Argument(help="the incident whose plan awaits approval")],
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
    by: ByOption = None,
    saga_id: SagaOption = None,
) -> None:
    """Reject the remediation plan that awaits approval: it never runs."""
    _decide(incident_id, False, by, reason, saga_id)


def _switch(paused: bool, by: str | None, reason: str) -> None:
    from responder.saga.pause import control_bucket, set_pause

    cfg = settings()
    who = by or _user()

    async def main() -> None:
        nc = await connect(nats_url_of(cfg), name="vigil-pause")
        try:
            kv = await control_bucket(nc.jetstream(), replicas=cfg.stream_replicas)
            await set_pause(kv, paused, by=who, reason=reason)
        finally:
            await nc.close()

    run(main())
    said = "paused: no new step starts (a running step finishes)" if paused else "resumed"
    console.print(f"remediation {said}; by {who}", markup=False)


@app.command()
def pause(
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
    by: ByOption = None,
) -> None:
    """Pause all remediation at once: no new step starts anywhere until `vigil resume`."""
    _switch(True, by, reason)


@app.command()
def resume(
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
    by: ByOption = None,
) -> None:
    """Lift the pause: the sagas it held go on."""
    _switch(False, by, reason)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


def nats_url_of(cfg: Settings) -> str:
    """VIGIL_NATS_URL, or the NATS of the `vigil up` running on the data dir."""
    if cfg.nats_url:
        return cfg.nats_url
    runtime = read_runtime(cfg.data_dir)
    if runtime is None:
        raise CliError(
            f"no running Vigil on {cfg.data_dir} and VIGIL_NATS_URL is unset: "
            "start `vigil up` or name the NATS"
        )
    return runtime.nats_url


@app.command()
def api() -> None:
    """Run the HTTP API alone against VIGIL_NATS_URL: the webhook, /api/v1 and the page.

    Lists and SQL need a projector on the same NATS (`vigil projector` or `vigil up`).
    """
    cfg = settings()
    if not cfg.nats_url:
        raise CliError("VIGIL_NATS_URL is required: the API joins an existing NATS")

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        assert cfg.nats_url

        def announce() -> None:
            host, port = sock.getsockname()[:2]
            where = f"[{host}]" if ":" in host else host
            console.print(f"API    http://{where}:{port}/api/v1 (the page at /, OpenAPI at /docs)")
            console.print(f"HTTP   http://{where}:{port}/webhooks/alertmanager")
            if cfg.webhook_token is None:
                err.print("warning: VIGIL_WEBHOOK_TOKEN is not set: the webhook refuses all")
            console.print("vigil api is up")

        await run_api(cfg, cfg.nats_url, sock, stop, on_ready=announce)
        console.print("vigil api stopped")

    sock = bind_http(cfg)
    try:
        run(main())
    finally:
        sock.close()


@app.command()
def tail(
    incident_id: Annotated[
        str | None, typer.Argument(help="only this incident's events (default: all)")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="first what the stream holds already")
    ] = False,
    after: Annotated[
        int | None, typer.Option(min=0, help="start after this stream sequence")
    ] = None,
) -> None:
    """Print events live, one line each (time, seq, incident, type, a summary), until Ctrl-C;
    from now on unless --from-start or --after. Against VIGIL_NATS_URL or the running
    `vigil up` of the data dir."""
    from vigil.tail import tail as follow

    if incident_id is not None:
        _check_incident_id(incident_id)
    if from_start and after is not None:
        raise CliError("--from-start and --after: give one")
    cfg = settings()
    url = nats_url_of(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await follow(url, incident_id, after=0 if from_start else after, stop=stop)

    try:
        run(main())
    except BrokenPipeError:  # `vigil tail | head`: the reader has gone, and so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit


@app.command()
def projector() -> None:
    """Run the projector (and its SQL service) alone against VIGIL_NATS_URL."""
    cfg = settings()
    if not cfg.nats_url:
        raise CliError("VIGIL_NATS_URL is required: the projector joins an existing NATS")
    usable_dir(cfg.data_dir)

    owner = int(os.environ.get(HELD_BY_ENV, "0")) or None  # run by `vigil up` as its child
    if owner is not None and owner != os.getppid():  # a leaked variable, or the parent died
        raise CliError(f"{HELD_BY_ENV}={owner} but that is not this process's parent: unset it")

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        assert cfg.nats_url
        await run_projector(
            cfg, cfg.nats_url, stop, on_ready=lambda _: console.print(PROJECTOR_READY), owner=owner
        )

    with contextlib.nullcontext() if owner else holding(cfg.data_dir):
        run(main())


@app.command()
def detector() -> None:
    """Run the Prometheus detector alone against VIGIL_NATS_URL (its /metrics on VIGIL_HTTP_*)."""
    cfg = settings()
    if not cfg.nats_url:
        raise CliError("VIGIL_NATS_URL is required: the detector joins an existing NATS")
    if not cfg.prometheus_url:
        raise CliError("VIGIL_PROMETHEUS_URL is required: the detector polls it")
    rules = detector_rules(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        assert cfg.nats_url
        metrics = FastAPI(title="Vigil detector")
        add_metrics(metrics)
        host, port = sock.getsockname()[:2]
        await run_roles(
            run_detector_role(
                cfg, cfg.nats_url, rules, stop,
                on_ready=lambda: console.print(
                    f"detecting: {len(rules.rules)} rules from {cfg.rules} on "
                    f"{cfg.prometheus_url}; metrics on http://{host}:{port}/metrics"
                ),
            ),
            serve_http(metrics, sock, stop, on_ready=lambda: None),
        )  # fmt: skip

    sock = bind_http(cfg)
    try:
        run(main())
    finally:
        sock.close()


def detector_rules(cfg: Settings) -> RuleSet:
    """The rules the detector polls with; CliError (one line) when unset or unusable."""
    if cfg.rules is None:
        raise CliError(
            "VIGIL_RULES is not set: the detector needs a rules file, e.g. deploy/rules.yaml"
        )
    try:
        return load_rules(cfg.rules)
    except RulesError as exc:
        raise CliError(f"{exc} (VIGIL_RULES)") from None


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="one read-only statement")],
    fmt: Annotated[Format, typer.Option("--format", "-f")] = "table",
    max_rows: Annotated[int | None, typer.Option(min=1, help="default: VIGIL_SQL_MAX_ROWS")] = None,
) -> None:
    """Query the read model; works whether or not `vigil up` is running."""
    cfg = settings()
    result = run_sql(cfg, query, max_rows or cfg.sql_max_rows)
    print_result(result, fmt)


def run_sql(cfg: Settings, query: str, max_rows: int) -> QueryResult:
    path = cfg.db_path
    if not path.exists():
        raise CliError(f"no database at {path}: run `vigil up` or `vigil replay` first")
    try:
        con = open_database(path, read_only=True)
    except duckdb.IOException as exc:
        if "lock" not in str(exc):
            raise CliError(f"cannot open {path}: {exc}") from None
        return run(sql_via_bus(cfg, query, max_rows))
    try:
        return run_read_only(con, query, max_rows=max_rows)
    finally:
        con.close()


async def sql_via_bus(cfg: Settings, query: str, max_rows: int) -> QueryResult:
    """The file is held by a running Vigil: ask it over NATS."""
    runtime = read_runtime(cfg.data_dir)
    if runtime is None:
        raise CliError(f"{cfg.db_path} is locked by another process that is not a running Vigil")
    nc = await connect(cfg.nats_url or runtime.nats_url, name="vigil-sql")
    try:
        return await request_sql(nc, runtime.sql_subject, query, max_rows=max_rows)
    finally:
        await nc.close()


def print_result(result: QueryResult, fmt: Format) -> None:
    if fmt == "json":
        sys.stdout.write(orjson.dumps(result.records()).decode() + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(result.columns)
        writer.writerows([[_csv_cell(v) for v in row] for row in result.rows])
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
    if result.truncated:
        err.print(f"(only the first {len(result.rows)} rows; raise --max-rows for more)")


def _csv_cell(value: Any) -> Any:
    """Lists and maps as JSON, as the other formats write them (not Python's repr)."""
    return orjson.dumps(value).decode() if isinstance(value, list | dict) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@app.command("replay")
def replay_cmd(
    output: Annotated[
        Path | None, typer.Option(help="write here instead of replacing the data dir's file")
    ] = None,
) -> None:
    """Rebuild the DuckDB file from the stream, from sequence 1."""
    cfg = settings()
    target = output or cfg.db_path
    if output is None:
        usable_dir(cfg.data_dir)
    else:
        usable_dir(output.parent, "directory of --output", "pass a writable --output path")
    if output is None and target.exists():
        try:
            open_database(target, read_only=True).close()
        except duckdb.IOException:
            raise CliError(
                f"{target} is in use (is `vigil up` running?): stop it, or pass --output PATH"
            ) from None

    async def main() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        async with broker(cfg) as (url, _), bus(cfg, url, "vigil-replay") as nc:
            with console.status("replaying the stream into DuckDB"):
                report = await replay(nc.jetstream(), target, batch=cfg.projector_batch)
        console.print(
            f"replayed {report.events} events ({report.dead_letters} dead letters) "
            f"up to sequence {report.last_seq} into {report.path}"
        )

    # The data dir is ours while we replace its file or run its embedded broker.
    if output is None or not cfg.nats_url:
        with holding(cfg.data_dir):
            run(main())
    else:
        run(main())


@app.command(name="eval")
def eval_cmd(
    path: Annotated[Path, typer.Argument(help="a scenario folder, or a folder of them")],
    fmt: Annotated[
        Literal["table", "json"], typer.Option("--format", help="table, or one JSON object")
    ] = "table",
    model: Annotated[
        str | None, typer.Option(help="the model to judge (default: VIGIL_MODEL, builtin)")
    ] = None,
    keep: Annotated[
        Path | None,
        typer.Option(help="keep each scenario's data here (KEEP/NAME/vigil: for vigil sql)"),
    ] = None,
) -> None:
    """Replay incident scenarios through the real pipeline and score the root causes found."""
    from vigil.evaluation import evaluate, summarize
    from vigil.scenarios import ScenarioError, find_scenarios

    cfg = settings()
    if model:
        cfg = cfg.model_copy(update={"model": model})
    try:
        check_model(cfg)
    except CliError as exc:  # the setting's name is not what the user typed
        said = str(exc).replace("VIGIL_MODEL=", "--model ") if model else str(exc)
        raise CliError(said) from None
    try:
        folders = find_scenarios(path)
    except ScenarioError as exc:
        raise CliError(str(exc)) from None

    if keep is not None:
        usable_dir(keep, "--keep folder", "name a writable folder")
        kept = [f.name for f in folders if (keep / f.name).exists()]
        if kept:  # its stream and read model would answer for this run
            raise CliError(
                f"--keep {keep} holds {kept[0]} from an earlier run: remove it, or keep "
                "this run elsewhere"
            )

    async def main() -> dict[str, Any]:
        # SIGTERM ends the run as Ctrl-C does: every server stopped, the temporary dir gone.
        here = asyncio.current_task()
        assert here is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, here.cancel)
        with (
            tempfile.TemporaryDirectory(prefix="vigil-eval-") as temp,
            _progress(len(folders)) as (on_start, on_done),
        ):
            results = await evaluate(
                folders, cfg, keep or Path(temp), on_start=on_start, on_done=on_done,
                keep=keep is not None,
            )  # fmt: skip
        return summarize(results, cfg.model)

    try:
        summary = run(main())
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None
    if fmt == "json":
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_eval(summary)
    if summary["failed"]:
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[tuple[Callable[[str], None], Callable[[Any], None]]]:
    """Which scenario runs, on stderr (stdout keeps the table or the JSON)."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
        console=err, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("scenarios", total=total)

        def on_start(name: str) -> None:
            progress.update(task, description=f"scenario {escape(name)}")

        def on_done(result: Any) -> None:
            progress.advance(task)
            mark = "error" if result.error else ("hit" if result.hit_top1 else "miss")
            if not err.is_terminal:
                err.print(f"{result.name}: {mark}", markup=False, highlight=False)

        yield on_start, on_done


def print_eval(summary: dict[str, Any]) -> None:
    table = Table("scenario", "expected", "top-1", "top-3", "hit", "confidence", "tool calls",
                  "seconds")  # fmt: skip
    for r in summary["results"]:
        if r["error"]:
            table.add_row(escape(r["name"]), "", "", "", "error", "", "", "")
            continue
        hit = "top-1" if r["hit_top1"] else ("top-3" if r["hit_top3"] else "miss")
        confidence = "" if r["confidence"] is None else f"{r['confidence']:.2f}"
        expected = (
            f"{r['expected']} ({r['expected_service']})" if r["expected_service"] else r["expected"]
        )
        top1 = f"{r['ranked'][0]} ({r['top_service']})" if r["ranked"] else "none"
        table.add_row(escape(r["name"]), escape(expected), escape(top1),
                      ", ".join(r["ranked"][:3]), hit, confidence, str(r["tool_calls"]),
                      f"{r['seconds']:.1f}")  # fmt: skip
    # Into a pipe or a file, rich would cut every cell to 80 columns: give the table room.
    (console if console.is_terminal else Console(width=200)).print(table)
    n = summary["scenarios"]
    brier = "n/a" if summary["brier"] is None else f"{summary['brier']:.3f}"
    console.print(
        f"model {summary['model']}: top-1 {summary['top1']}/{n}, top-3 {summary['top3']}/{n}, "
        f"Brier score {brier} (0 is perfect; always 0.5 scores 0.25)",
        markup=False, highlight=False,
    )  # fmt: skip
    for r in summary["results"]:
        if r["error"]:
            err.print(f"{r['name']}: could not run: {r['error']}", markup=False, highlight=False)


@app.command()
def demo(
    stay: Annotated[
        bool | None,
        typer.Option(
            "--stay/--no-stay",
            help="after the report and the remediations, keep everything running until "
            "Ctrl-C; default: when the output is a terminal",
        ),
    ] = None,
) -> None:
    """A real incident and its remediation: the shop, Prometheus, Alertmanager and every role
    of `vigil up`."""
    from vigil.demo import Demo, DemoError, Interrupted, Teller, fresh_data_dir
    from vigil.servers import ServerError, binary

    cfg = settings().model_copy(update={"http_port": 0})  # a demo takes no fixed port
    usable_dir(cfg.data_dir)
    try:  # missing Debian packages: one line, before anything starts
        binary("prometheus", "prometheus")
        binary("prometheus-alertmanager", "prometheus-alertmanager")
    except ServerError as exc:
        raise CliError(str(exc)) from None
    check_model(cfg)
    teller = Teller(console, live=console.is_terminal)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await Demo(cfg, sock, teller, stop, up_roles).run(
            stay=console.is_terminal if stay is None else stay
        )

    with holding(cfg.data_dir):
        try:
            fresh_data_dir(cfg.data_dir, embedded=not cfg.nats_url)
        except DemoError as exc:
            raise CliError(str(exc)) from None
        sock = bind_http(cfg)
        try:
            run(main())
            teller.plain("demo done: everything it started is stopped")
        except (DemoError, ServerError) as exc:
            raise CliError(str(exc)) from None
        except Interrupted:
            teller.plain("demo interrupted: everything it started is stopped")
            raise SystemExit(130) from None
        finally:
            sock.close()
            clear_runtime(cfg.data_dir)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tune_gc()
    try:
        app()
    except (
        CliError,
        SqlError,
        BrokerError,
        BusUnreachable,
        DataDirBusy,
        HttpPortBusy,
        RoleFailed,
    ) as exc:
        err.print(f"vigil: {exc}", markup=False, highlight=False)
        raise SystemExit(2) from None
