"""Per-series hysteresis: N consecutive anomalous polls open an episode, M healthy ones close it.

An episode is what one incident is about. It opens with `AnomalyPredicted` (a forecast says
the line will be crossed) or `AnomalyDetected` (it is crossed), escalates from predicted to
detected at most once, and closes with `AnomalyResolved`. `step` is a pure function, so the
poller applies its result only once the events it calls for are acknowledged: a failed
publish leaves the state as it was and the next poll emits the same events again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from detector.verdicts import Level

ChangeKind = Literal["predicted", "detected", "resolved"]


@dataclass(frozen=True)
class SeriesState:
    starts_at: datetime | None = None  # set while an episode is open
    predicted: bool = False  # AnomalyPredicted emitted for this episode
    detected: bool = False  # AnomalyDetected emitted for this episode
    run: int = 0  # consecutive anomalous (predicted or breached) polls
    run_since: datetime | None = None
    breaches: int = 0  # consecutive breached polls
    breaches_since: datetime | None = None
    healthy: int = 0  # consecutive healthy polls while open
    healthy_since: datetime | None = None

    @property
    def open(self) -> bool:
        return self.starts_at is not None

    @property
    def anomalous_since(self) -> datetime | None:
        """Start of the open episode, or of the run of anomalous polls that may open one."""
        return self.starts_at or self.run_since


@dataclass(frozen=True)
class Change:
    """An event the poll calls for; `at` is the time the fact became true."""

    kind: ChangeKind
    starts_at: datetime
    at: datetime


CLOSED = SeriesState()


def step(
    state: SeriesState, level: Level, at: datetime, *, fire_after: int, resolve_after: int
) -> tuple[SeriesState, list[Change]]:
    """The state after a poll at `at` judged `level`, and the events that poll calls for."""
    if level == "no_data":
        return state, []  # a gap neither fires nor resolves: it is as if it did not happen
    if level == "healthy":
        return _healthy(state, at, resolve_after)
    run_since = state.run_since if state.run else at
    s = dataclasses.replace(state, run=state.run + 1, run_since=run_since, healthy=0,
                            healthy_since=None)  # fmt: skip
    if level == "breached":
        since = state.breaches_since if state.breaches else at
        s = dataclasses.replace(s, breaches=state.breaches + 1, breaches_since=since)
    else:
        s = dataclasses.replace(s, breaches=0, breaches_since=None)
    changes: list[Change] = []
    if not s.open and s.run >= fire_after:
        s = dataclasses.replace(s, starts_at=run_since)
        if s.breaches < fire_after:  # anomalous for long enough, but not yet past the line
            s = dataclasses.replace(s, predicted=True)
            changes.append(Change("predicted", run_since, run_since))
    if s.open and not s.detected and s.breaches >= fire_after:
        assert s.starts_at is not None and s.breaches_since is not None
        s = dataclasses.replace(s, detected=True)
        when = s.starts_at if not s.predicted else s.breaches_since
        changes.append(Change("detected", s.starts_at, when))
    return s, changes


def _healthy(
    state: SeriesState, at: datetime, resolve_after: int
) -> tuple[SeriesState, list[Change]]:
    if not state.open:
        return CLOSED, []
    since = state.healthy_since if state.healthy else at
    s = dataclasses.replace(state, run=0, run_since=None, breaches=0, breaches_since=None,
                            healthy=state.healthy + 1, healthy_since=since)  # fmt: skip
    if s.healthy < resolve_after:
        return s, []
    assert state.starts_at is not None
    return CLOSED, [Change("resolved", state.starts_at, since)]


def reopened(starts_at: datetime, *, predicted: bool, detected: bool) -> SeriesState:
    """The state of an episode found open in the event log after a restart."""
    return SeriesState(starts_at=starts_at, predicted=predicted, detected=detected)
