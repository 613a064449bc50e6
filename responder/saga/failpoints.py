"""Failpoints: where the crash test kills the orchestrator (kill -9), named in the code.

`VIGIL_FAILPOINTS=step.executed#2` makes the process SIGKILL itself the second time it
passes `failpoint("step.executed")` (`#1` when no count is given; several, comma-separated).
Unset, as in every deployment, a failpoint costs one dictionary lookup. The crash test sets
it on real orchestrator processes to die at each step boundary in turn (etcd's gofail and
TiKV's fail-rs do the same).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from functools import cache

ENV = "VIGIL_FAILPOINTS"
BOUNDARIES = (
    "saga.started",  # SagaStarted recorded, no step begun
    "step.started",  # SagaStepStarted recorded, the executor not yet called
    "step.executed",  # the executor answered, its outcome not yet recorded
    "step.recorded",  # the step's outcome recorded
    "compensation.started",
    "compensation.executed",
    "compensation.recorded",
)
_passed: Counter[str] = Counter()


@cache
def _armed() -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in os.environ.get(ENV, "").split(","))):
        name, _, nth = item.partition("#")
        armed[name] = int(nth or 1)
    return armed


def failpoint(name: str) -> None:
    nth = _armed().get(name)
    if nth is None:
        return
    _passed[name] += 1
    if _passed[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
