"""The supervisor of `vigil up`: a role that dies after it was ready is restarted with back-off
while the others keep serving; only a role that fails before it was ever ready stops it all.

tenacity runs each role's restarts: its exponential wait (first, doubling, capped) is counted
from the role's last healthy run, and its sleep is a wait on the stop event, so SIGTERM or
Ctrl-C ends a back-off at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import tenacity
from prometheus_client import Counter
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

# Registered once, in the default registry that the API's /metrics serves.
ROLE_RESTARTS = Counter(
    "vigil_role_restarts_total",
    "Restarts of a role of `vigil up` after it died (exited, crashed) while serving",
    ["role"],
)


class RoleFailed(Exception):
    """A role of `vigil up` stopped on its own; the message says which and how."""


class RoleDied(Exception):
    """A role that had been ready ended without being asked to; it is to be restarted.

    `healthy`: it had been ready for at least the policy's `healthy_after` seconds.
    """

    def __init__(self, role: str, reason: str, *, healthy: bool) -> None:
        super().__init__(f"the {role} role died ({reason})")
        self.role = role
        self.reason = reason
        self.healthy = healthy


@dataclass(frozen=True)
class BackOffPolicy:
    """Seconds: `first` wait after a death, doubling per death up to `cap`; a death after the
    role was ready for `healthy_after` seconds waits `first` again."""

    first: float = 0.5
    cap: float = 30.0
    healthy_after: float = 60.0


@dataclass(frozen=True)
class Death:
    """One death of a role, as reported: `back_off` seconds until restart number `restart`."""

    role: str
    reason: str
    back_off: float
    restart: int


@dataclass(frozen=True)
class Role:
    """A part of `vigil up`. `start(on_ready)` runs it until the stop event (calling on_ready
    once it serves) and is called again for each restart."""

    name: str
    start: Callable[[Callable[[], None]], Awaitable[None]]


class BackOff(wait_base):
    """tenacity's exponential wait, counted over the deaths since the role last ran healthily."""

    def __init__(self, policy: BackOffPolicy) -> None:
        self._exponential = tenacity.wait_exponential(multiplier=policy.first, max=policy.cap)
        self._healthy_at = 0  # the attempt (a life of the role) that last ran healthily

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        died = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(died, RoleDied) and died.healthy:
            self._healthy_at = retry_state.attempt_number - 1
        since_healthy = copy.copy(retry_state)  # only its attempt number is read
        since_healthy.attempt_number -= self._healthy_at
        return self._exponential(since_healthy)


class Supervisor:
    """Runs `roles` until `stop`; see the module's docstring for the policy.

    `on_up` is called once, when every role has been ready; `on_death` (for tests) with each
    death as it is logged; `clock` (seconds, monotonic) times how long a role was healthy.
    """

    def __init__(
        self,
        roles: Sequence[Role],
        stop: asyncio.Event,
        *,
        policy: BackOffPolicy | None = None,
        on_up: Callable[[], None] = lambda: None,
        on_death: Callable[[Death], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roles = list(roles)
        self.stop = stop
        self.policy = policy or BackOffPolicy()
        self.on_up = on_up
        self.on_death = on_death
        self.clock = clock
        self._ever_ready: set[str] = set()
        self._announced = False
        for role in self.roles:  # shown as 0 on /metrics until the first restart
            ROLE_RESTARTS.labels(role=role.name)

    async def run(self) -> None:
        """Until `stop` is set and every role has returned.

        Raises, as itself, the error of a role that failed before it was ever ready (the
        other roles are cancelled first), or that a role raised while stopping.
        """
        await run_roles(*(self._supervise(role) for role in self.roles))

    async def _supervise(self, role: Role) -> None:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(RoleDied),
            wait=BackOff(self.policy),
            sleep=self._back_off,
            before_sleep=self._report,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self.stop.is_set():  # stopped during the back-off
                    return
                restart = attempt.retry_state.attempt_number - 1
                if restart:
                    ROLE_RESTARTS.labels(role=role.name).inc()
                await self._life(role, restart)

    async def _life(self, role: Role, restart: int) -> None:
        """One start of `role` to its end: returns on stop; raises RoleDied to be restarted,
        or the role's own error if it was never ready (or failed while stopping)."""
        ready_at: float | None = None

        def on_ready() -> None:
            nonlocal ready_at
            ready_at = self.clock()
            self._ready(role.name, restart)

        error: Exception | None = None
        try:
            await role.start(on_ready)
        except Exception as exc:
            if self.stop.is_set() or role.name not in self._ever_ready:
                raise
            error = exc
        else:
            if self.stop.is_set():
                return
            if role.name not in self._ever_ready:
                raise RoleFailed(f"the {role.name} role ended before it was ready")
        healthy = ready_at is not None and self.clock() - ready_at >= self.policy.healthy_after
        raise RoleDied(role.name, _why(error), healthy=healthy) from error

    def _ready(self, name: str, restart: int) -> None:
        self._ever_ready.add(name)
        if restart:
            log.warning("the %s role is up again (restart %d)", name, restart)
        if not self._announced and self._ever_ready >= {r.name for r in self.roles}:
            self._announced = True
            self.on_up()

    async def _back_off(self, seconds: float) -> None:
        """tenacity's sleep: `seconds`, or less if `stop` is set meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()

    def _report(self, retry_state: tenacity.RetryCallState) -> None:
        died = retry_state.outcome.exception() if retry_state.outcome else None
        assert isinstance(died, RoleDied)
        death = Death(
            died.role, died.reason, retry_state.upcoming_sleep, retry_state.attempt_number
        )
        log.error("%s; restarting it in %g s (restart %d)", died, death.back_off, death.restart)
        self.on_death(death)


def _why(error: Exception | None) -> str:
    """One line: a RoleFailed's message, else the exception's type and message."""
    if error is None:
        return "it returned on its own"
    if isinstance(error, RoleFailed):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())


async def run_roles(*roles: Coroutine[Any, Any, None]) -> None:
    """Every role until all end; the first to fail stops the others and is raised as itself
    (so the CLI prints its one-line message, not an exception group)."""
    try:
        async with asyncio.TaskGroup() as group:
            for role in roles:
                group.create_task(role)
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
