"""Helpers to run the `vigil` command line as users do: real subprocesses, nats-server, DuckDB.

`VigilUp` wraps a running `vigil up` and reads its stdout line by line; `Watched` pins a process
that is not ours (the nats-server `vigil up` embeds) by a pidfd, so its exit can be awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from eventlog.envelope import Event, parse_event
from eventlog.publisher import EventPublisher
from eventlog.sql_service import request_sql
from eventlog.stream import connect
from vigil.runtime import Runtime, read_runtime

VIGIL = str(Path(sys.executable).parent / "vigil")
DEADLINE = 15.0


def vigil_env(
    data_dir: Path | None = None, *, columns: int | None = None, **settings: str
) -> dict[str, str]:
    """This process's environment without any VIGIL_ variable, plus the given ones.

    Output goes to pipes, so rich lays it out for 80 columns unless `columns` is given.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VIGIL_") and k not in ("COLUMNS", "LINES", "FORCE_COLOR")
    }
    env["NO_COLOR"] = "1"
    if columns is not None:
        env["COLUMNS"] = str(columns)
    if data_dir is not None:
        env["VIGIL_DATA_DIR"] = str(data_dir)
    env["VIGIL_HTTP_PORT"] = "0"  # tests run side by side: never the default 8080
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class Done:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


async def run_vigil(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = DEADLINE
) -> Done:
    """Run one `vigil` command to its end (killed and failed if it outlives `timeout`)."""
    proc = await asyncio.create_subprocess_exec(
        VIGIL,
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise AssertionError(f"vigil {' '.join(args)} still running after {timeout:g}s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str
    comm: str
    start_time: int  # clock ticks after boot: tells a reused pid apart


def proc_info(pid: int) -> ProcInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcInfo(pid, int(fields[1]), fields[0], comm, int(fields[19]))


def children(ppid: int) -> list[ProcInfo]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = proc_info(int(entry.name))
            if info is not None and info.ppid == ppid:
                found.append(info)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


class Watched:
    """A process that is not our child, pinned by a pidfd so its exit can be awaited."""

    def __init__(self, info: ProcInfo) -> None:
        self.info = info
        self.fd = os.pidfd_open(info.pid)

    def exited(self) -> bool:
        return bool(select.select([self.fd], [], [], 0)[0])

    async def wait_exit(self, timeout: float = 10.0) -> None:
        """The pidfd turns readable when the process has terminated (reaped or zombie)."""
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(self.fd, lambda: gone.done() or gone.set_result(None))
        try:
            await asyncio.wait_for(gone, timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.info.comm} pid {self.info.pid} still running after {timeout:g}s"
            ) from None
        finally:
            loop.remove_reader(self.fd)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class VigilUp:
    """A running `vigil up`; its stdout is read only through `wait_for_line`."""

    proc: asyncio.subprocess.Process
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    watched: list[Watched] = field(default_factory=list)
    _err_task: asyncio.Task[None] | None = None
    _err_seen: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_for_line(self, text: str, timeout: float = DEADLINE) -> str:
        """Read stdout until a line contains `text`; fail at EOF or after `timeout`."""
        assert self.proc.stdout is not None

        async def read() -> str:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    await self.proc.wait()
                    raise AssertionError(
                        f"vigil up exited ({self.proc.returncode}) before printing {text!r}; "
                        f"stdout={self.lines} stderr={self.stderr}"
                    )
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {text!r} from vigil up within {timeout:g}s; stdout={self.lines}"
            ) from None

    async def wait_for_stderr(self, text: str, timeout: float = DEADLINE) -> str:
        """The first stderr line that contains `text`, once it is there (earlier lines count)."""

        def found() -> str | None:
            return next((line for line in self.stderr if text in line), None)

        try:
            async with asyncio.timeout(timeout), self._err_seen:
                await self._err_seen.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise AssertionError(
                f"no {text!r} on the stderr of vigil up within {timeout:g}s; stderr={self.stderr}"
            ) from None
        line = found()
        assert line is not None
        return line

    async def _collect_stderr(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            async with self._err_seen:
                self.stderr.append(raw.decode().rstrip("\n"))
                self._err_seen.notify_all()

    async def up(self) -> Runtime:
        await self.wait_for_line("vigil is up")
        runtime = read_runtime(self.data_dir)
        assert runtime is not None, "vigil is up but wrote no runtime.json"
        assert runtime.pid == self.pid
        return runtime

    def http_url(self) -> str:
        """The webhook's URL, as `vigil up` announced it (after `up()`)."""
        announced = [line.split()[1] for line in self.lines if line.startswith("HTTP ")]
        assert announced, f"vigil up announced no HTTP address: {self.lines}"
        return announced[0]

    def nats_server(self) -> Watched:
        """The nats-server child of this `vigil up`, watched (and killed at teardown)."""
        found = [c for c in children(self.pid) if c.comm == "nats-server"]
        assert len(found) == 1, f"expected one nats-server child, found {found}"
        # the one configured in our data dir, not some other nats-server
        assert any(str(self.data_dir.resolve()) in arg for arg in cmdline(found[0].pid))
        return self._watch(found[0])

    def projector(self) -> Watched:
        """The `vigil projector` child of this `vigil up`, watched (and killed at teardown)."""
        found = [c for c in children(self.pid) if cmdline(c.pid)[-3:-1] == ["vigil", "projector"]]
        assert len(found) == 1, f"expected one projector child, found {found}"
        return self._watch(found[0])

    def _watching(self, child: ProcInfo) -> bool:
        return any(w.info == child for w in self.watched)

    def _watch(self, child: ProcInfo) -> Watched:
        watched = Watched(child)
        self.watched.append(watched)
        return watched

    async def exit_code(self, timeout: float = DEADLINE) -> int:
        """Wait for the exit; stdout left unread is collected into `lines`."""
        assert self.proc.stdout is not None
        try:
            rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"vigil up did not exit within {timeout:g}s") from None
        self.lines.extend(rest.decode().splitlines())
        if self._err_task is not None:  # stderr read to its end too
            await asyncio.wait_for(asyncio.shield(self._err_task), timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL; and any child (nats-server, projector) it left."""
        if self.proc.returncode is None:
            for child in children(self.pid):
                if not self._watching(child):
                    with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                        self.watched.append(Watched(child))
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 40)  # it gives its projector 30 s
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for w in self.watched:
            if not w.exited():
                w.kill()
            w.close()
        if self._err_task is not None:
            self._err_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._err_task


async def start_up(data_dir: Path, **settings: str) -> VigilUp:
    """Start `vigil up` (the caller stops it: see the `vigil_up` fixture)."""
    proc = await asyncio.create_subprocess_exec(
        VIGIL,
        "up",
        env=vigil_env(data_dir, **settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    up = VigilUp(proc, data_dir)
    up._err_task = asyncio.create_task(up._collect_stderr())
    return up


StartUp = Callable[..., Awaitable[VigilUp]]


async def publish(nats_url: str, events: list[Event]) -> int:
    """Append events (the streams exist once `vigil up` is up); returns the last sequence."""
    nc = await connect(nats_url, name="vigil-test-publisher")
    try:
        acks = await EventPublisher(nc.jetstream()).publish_many(events)
    finally:
        await nc.close()
    return acks[-1].seq


async def wait_projected(runtime: Runtime, seq: int, timeout: float = DEADLINE) -> None:
    """Ask the running service (over NATS) until its checkpoint has reached `seq`."""
    query = "SELECT last_seq FROM projector_checkpoints WHERE stream = 'VIGIL_EVENTS'"
    nc = await connect(runtime.nats_url, name="vigil-test-wait")
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = await request_sql(nc, runtime.sql_subject, query)
                if result.rows and result.rows[0][0] >= seq:
                    return
                await asyncio.sleep(0.02)  # poll interval: the projector emits no event to await
    except TimeoutError:
        raise AssertionError(
            f"the projector did not reach sequence {seq} in {timeout:g}s"
        ) from None
    finally:
        await nc.close()


async def watch_events(nc: NATS) -> EventWatch:
    """Every event in the stream, from the first (an ordered consumer), as it is appended."""
    watch = EventWatch()
    await nc.jetstream().subscribe("vigil.evt.>", cb=watch.on_message, ordered_consumer=True)
    return watch


class EventWatch:
    """Every event of the stream, and a way to await a condition on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.events.append(parse_event(msg.data))
        self._changed.set()

    async def until(self, done: Callable[[list[Event]], bool], what: str) -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                while not done(self.events):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {DEADLINE:g}s; saw {self.events}") from None

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    async def first(self, match: Callable[[Event], bool], timeout: float = DEADLINE) -> Event:
        """The first event that `match`es, once it is appended."""
        async with asyncio.timeout(timeout):
            while not any(match(e) for e in self.events):
                self._changed.clear()
                await self._changed.wait()
        return next(e for e in self.events if match(e))
