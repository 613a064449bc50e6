"""The supervisor's policy, on roles scripted life by life (no processes): restart after a
death, tenacity's back-off growing to its cap and reset by a healthy run, a stop that ends the
back-off at once, and a role never ready at its first start stopping everything."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from vigil.supervisor import BackOffPolicy, Death, Role, RoleFailed, Supervisor

Ready = Callable[[], None]
Life = Callable[[Ready], Awaitable[None]]
FAST = BackOffPolicy(first=0.01, cap=0.04, healthy_after=60.0)
DEADLINE = 10.0


class Clock:
    """The supervisor's clock, moved by the roles: a life 'runs for' seconds instantly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Scripted:
    """A role whose n-th start runs lives[n]; `starts` and `ends` are loop times."""

    name: str
    lives: list[Life]
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    def role(self) -> Role:
        return Role(self.name, self._start)

    async def _start(self, ready: Ready) -> None:
        loop = asyncio.get_running_loop()
        life = self.lives[len(self.starts)]
        self.starts.append(loop.time())
        try:
            await life(ready)
        finally:
            self.ends.append(loop.time())


def dies(reason: str, clock: Clock | None = None, ran: float = 0.0) -> Life:
    """Ready, then (having run `ran` seconds on `clock`) a RuntimeError."""

    async def life(ready: Ready) -> None:
        ready()
        if clock is not None:
            clock.now += ran
        raise RuntimeError(reason)

    return life


def fails_before_ready(error: Exception) -> Life:
    async def life(ready: Ready) -> None:
        raise error

    return life


def returns() -> Life:
    async def life(ready: Ready) -> None:
        ready()

    return life


def serves(stop: asyncio.Event, serving: asyncio.Event | None = None) -> Life:
    """Ready, `serving` set, then runs until `stop`."""

    async def life(ready: Ready) -> None:
        ready()
        if serving is not None:
            serving.set()
        await stop.wait()

    return life


def restarts(role: str) -> float:
    return REGISTRY.get_sample_value("vigil_role_restarts_total", {"role": role}) or 0.0


async def within(awaitable: Awaitable[None], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE):
            await awaitable
    except TimeoutError:
        raise AssertionError(f"{what}: not within {DEADLINE:g}s") from None


async def test_a_role_that_dies_after_it_was_ready_is_restarted_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop, back = asyncio.Event(), asyncio.Event()
    flaky = Scripted("flaky", [dies("boom"), returns(), serves(stop, back)])
    steady = Scripted("steady", [serves(stop)])
    deaths: list[Death] = []
    ups: list[None] = []
    before = restarts("flaky"), restarts("steady")
    supervisor = Supervisor(
        [flaky.role(), steady.role()],
        stop,
        policy=FAST,
        on_up=lambda: ups.append(None),
        on_death=deaths.append,
    )
    running = asyncio.create_task(supervisor.run())
    await within(back.wait(), "the third start of the flaky role")
    assert deaths == [
        Death("flaky", "RuntimeError: boom", 0.01, 1),
        Death("flaky", "it returned on its own", 0.02, 2),
    ]
    assert restarts("flaky") - before[0] == 2 and restarts("steady") == before[1]
    assert len(flaky.starts) == 3 and len(steady.starts) == 1 and steady.ends == []
    assert ups == [None]  # announced once, not again after each restart
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "the flaky role died (RuntimeError: boom); restarting it in 0.01 s (restart 1)",
        "the flaky role died (it returned on its own); restarting it in 0.02 s (restart 2)",
    ]
    stop.set()
    await within(running, "the supervisor's end after stop")
    assert len(steady.ends) == 1 and len(flaky.ends) == 3


async def test_back_off_grows_to_its_cap_and_a_healthy_run_resets_it() -> None:
    stop, back = asyncio.Event(), asyncio.Event()
    clock = Clock()
    lives = [dies(f"death {n}") for n in range(4)]  # 0.01, 0.02, 0.04, then the cap: 0.04
    lives.append(dies("not quite healthy", clock, ran=59.0))  # grows on: still the cap
    lives.append(dies("after a healthy run", clock, ran=60.0))  # reset: 0.01
    lives.append(dies("again"))  # and growing from there: 0.02
    lives.append(serves(stop, back))
    role = Scripted("growing", lives)
    deaths: list[Death] = []
    supervisor = Supervisor([role.role()], stop, policy=FAST, on_death=deaths.append, clock=clock)
    running = asyncio.create_task(supervisor.run())
    await within(back.wait(), "the last start")
    stop.set()
    await within(running, "the supervisor's end after stop")
    waits = [d.back_off for d in deaths]
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.04, 0.01, 0.02])
    assert [d.restart for d in deaths] == [1, 2, 3, 4, 5, 6, 7]
    # Each restart came no sooner than its back-off after the death (the loop's clock).
    for death, restart, wait in zip(role.ends[:-1], role.starts[1:], waits, strict=True):
        assert restart - death >= wait - 0.002, (restart - death, wait)


async def test_stop_ends_a_back_off_at_once() -> None:
    stop, died = asyncio.Event(), asyncio.Event()
    role = Scripted("patient", [dies("boom"), serves(stop)])
    other = Scripted("other", [serves(stop)])
    hour = BackOffPolicy(first=3600.0, cap=3600.0)
    before = restarts("patient")
    supervisor = Supervisor(
        [role.role(), other.role()], stop, policy=hour, on_death=lambda _: died.set()
    )
    running = asyncio.create_task(supervisor.run())
    await within(died.wait(), "the death")
    stop.set()
    await within(running, "the supervisor's end during an hour's back-off")
    assert len(role.starts) == 1 and restarts("patient") == before  # not restarted
    assert len(other.ends) == 1


@pytest.mark.parametrize(
    ("raises", "message"),
    [(True, "^cannot open its file$"), (False, "^the broken role ended before it was ready$")],
)
async def test_a_role_never_ready_at_its_first_start_stops_everything(
    raises: bool, message: str
) -> None:
    stop, steady_up = asyncio.Event(), asyncio.Event()

    async def unready(ready: Ready) -> None:
        await steady_up.wait()  # the other role is serving: it must be stopped too
        if raises:
            raise RoleFailed("cannot open its file")

    broken = Scripted("broken", [unready])
    steady = Scripted("steady-too", [serves(stop, steady_up)])
    deaths: list[Death] = []
    ups: list[None] = []
    supervisor = Supervisor(
        [steady.role(), broken.role()],
        stop,
        policy=FAST,
        on_up=lambda: ups.append(None),
        on_death=deaths.append,
    )
    with pytest.raises(RoleFailed, match=message):  # as itself, not in an exception group
        await within(supervisor.run(), "the supervisor's failure")
    assert deaths == [] and ups == [] and len(broken.starts) == 1
    assert len(steady.ends) == 1  # cancelled


async def test_a_restart_that_fails_before_it_is_ready_is_retried() -> None:
    stop, back = asyncio.Event(), asyncio.Event()
    role = Scripted(
        "unlucky", [dies("boom"), fails_before_ready(OSError("busy")), serves(stop, back)]
    )
    before = restarts("unlucky")
    deaths: list[Death] = []
    supervisor = Supervisor([role.role()], stop, policy=FAST, on_death=deaths.append)
    running = asyncio.create_task(supervisor.run())
    await within(back.wait(), "the third start")
    stop.set()
    await within(running, "the supervisor's end after stop")
    assert [(d.reason, d.restart) for d in deaths] == [
        ("RuntimeError: boom", 1),
        ("OSError: busy", 2),
    ]
    assert restarts("unlucky") - before == 2
