"""The per-series state machine, alone: N to fire, M to resolve, gaps change nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from detector.hysteresis import CLOSED, Change, SeriesState, step
from detector.verdicts import Level

T = datetime(2024, 5, 1, tzinfo=UTC)
LEVELS: dict[str, Level] = {"B": "breached", "P": "predicted", "H": "healthy", ".": "no_data"}


def run(
    polls: str, *, n: int = 3, m: int = 2, state: SeriesState = CLOSED
) -> tuple[SeriesState, list[tuple[int, Change]]]:
    """Step through polls written as letters (one a minute); each change with its poll."""
    out = []
    for i, letter in enumerate(polls):
        state, changes = step(state, LEVELS[letter], at(i), fire_after=n, resolve_after=m)
        out += [(i, c) for c in changes]
    return state, out


def at(i: int) -> datetime:
    return T + timedelta(minutes=i)


def test_n_consecutive_breaches_fire_dated_at_the_first() -> None:
    state, changes = run("HHBBB")
    assert changes == [(4, Change("detected", at(2), at(2)))]
    assert state.open and state.detected and state.starts_at == at(2)


def test_m_healthy_polls_resolve_dated_at_the_first_healthy_one() -> None:
    _, changes = run("BBBHBHH")
    assert [(i, c.kind) for i, c in changes] == [(2, "detected"), (6, "resolved")]
    assert changes[1][1] == Change("resolved", at(0), at(5))


def test_flapping_short_of_n_never_fires() -> None:
    assert run("BBHBBHBBHBB")[1] == []


def test_a_gap_is_as_if_the_poll_did_not_happen() -> None:
    assert [c.kind for _, c in run("BB..B")[1]] == ["detected"]
    state, changes = run("BBBH..H")
    assert [c.kind for _, c in changes] == ["detected", "resolved"]
    assert state == CLOSED
    assert run("BBB....")[0].open  # no data never resolves


def test_a_prediction_escalates_once_to_detected_in_the_same_episode() -> None:
    _, changes = run("PPPBBPBBBBHH")
    assert changes == [
        (2, Change("predicted", at(0), at(0))),
        (8, Change("detected", at(0), at(6))),
        (11, Change("resolved", at(0), at(10))),
    ]


def test_breaches_and_predictions_together_open_a_predicted_episode() -> None:
    _, changes = run("PBB")
    assert [(i, c.kind) for i, c in changes] == [(2, "predicted")]


def test_an_episode_found_open_after_a_restart_does_not_fire_again() -> None:
    state, _ = run("BBB")
    reopened = SeriesState(starts_at=state.starts_at, detected=True)  # as the log says
    _, after = run("BBBBHH", state=reopened)
    assert [c.kind for _, c in after] == ["resolved"]
    assert after[0][1].starts_at == at(0)


polls = st.text(alphabet="BPH.", max_size=60)


@given(polls, st.integers(1, 4), st.integers(1, 4))
def test_episodes_are_well_formed(letters: str, n: int, m: int) -> None:
    """Every episode is: predicted and/or detected (in that order), then resolved; a detected
    follows n breaches in a row, a resolve m healthy polls in a row (gaps aside)."""
    _, changes = run(letters, n=n, m=m)
    kinds = "".join(c.kind[0] for _, c in changes)  # p, d, r
    assert re.fullmatch(r"((pd?|d)r)*(pd?|d)?", kinds)
    seen = letters.replace(".", "")
    index = [i for i, letter in enumerate(letters) if letter != "."]
    for i, change in changes:
        k = index.index(i)
        if change.kind == "detected":
            assert seen[k - n + 1 : k + 1] == "B" * n
        elif change.kind == "resolved":
            assert seen[k - m + 1 : k + 1] == "H" * m
        else:
            assert set(seen[k - n + 1 : k + 1]) <= {"B", "P"}


@given(polls, st.integers(1, 4), st.integers(1, 4))
def test_gaps_change_nothing(letters: str, n: int, m: int) -> None:
    with_gaps = [c.kind for _, c in run(letters, n=n, m=m)[1]]
    without = [c.kind for _, c in run(letters.replace(".", ""), n=n, m=m)[1]]
    assert with_gaps == without


@given(polls, st.integers(0, 60), st.integers(1, 4), st.integers(1, 4))
def test_a_restart_anywhere_never_opens_an_open_episode_again(
    letters: str, cut: int, n: int, m: int
) -> None:
    """Restart after `cut` polls with only what the events say; the episode the first run
    left open is continued, never opened a second time."""
    cut = min(cut, len(letters))
    first_state, first = run(letters[:cut], n=n, m=m)
    state = CLOSED
    if first_state.open:
        assert first_state.starts_at is not None
        state = SeriesState(starts_at=first_state.starts_at, predicted=first_state.predicted,
                            detected=first_state.detected)  # fmt: skip
    _, second = run(letters[cut:], n=n, m=m, state=state)
    kinds = "".join(c.kind[0] for _, c in first + second)
    assert re.fullmatch(r"((pd?|d)r)*(pd?|d)?", kinds), kinds
