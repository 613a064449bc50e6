"""The envelope and the discriminated union: every type round-trips, anything else is refused."""

from __future__ import annotations

import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from eventlog.envelope import EVENT_TYPES, MalformedEvent, new_event, parse_event
from eventlog.payloads import PAYLOAD_TYPES, AnomalyDetected
from tests.eventlog.samples import SAMPLES, T0, agent_step, event


def test_every_event_type_has_a_sample() -> None:
    assert {type(s) for s in SAMPLES} == set(PAYLOAD_TYPES)
    assert len(EVENT_TYPES) == 30


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip_keeps_type_and_facts(payload: object) -> None:
    original = event(payload)  # type: ignore[arg-type]
    parsed = parse_event(original.to_json())
    assert parsed == original
    assert type(parsed.data) is type(payload)
    assert parsed.type == type(payload).__name__
    assert parsed.subject == f"vigil.evt.inc-1.{parsed.type}"


def test_events_are_immutable() -> None:
    e = event(SAMPLES[0])
    with pytest.raises(ValidationError):
        e.incident_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        e.data.name = "x"  # type: ignore[attr-defined]


def test_unknown_type_is_named() -> None:
    raw = orjson.loads(event(SAMPLES[0]).to_json())
    raw["type"] = "AlertExploded"
    with pytest.raises(MalformedEvent, match="unknown event type 'AlertExploded'"):
        parse_event(orjson.dumps(raw))


def test_payload_of_the_wrong_shape_names_the_field() -> None:
    raw = orjson.loads(event(SAMPLES[0]).to_json())
    del raw["data"]["fingerprint"]
    with pytest.raises(MalformedEvent, match=r"data\.fingerprint: Field required"):
        parse_event(orjson.dumps(raw))


def test_payload_of_another_type_is_refused() -> None:
    raw = orjson.loads(event(agent_step()).to_json())
    raw["type"] = "AnomalyDetected"
    with pytest.raises(MalformedEvent, match=r"AnomalyDetected\.data"):
        parse_event(orjson.dumps(raw))


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", "", "x" * 129])
def test_incident_id_must_be_one_subject_token(bad: str) -> None:
    with pytest.raises(ValidationError, match="incident_id"):
        new_event(SAMPLES[0], incident_id=bad, source="test")


def test_causation_and_correlation_follow_the_chain() -> None:
    first = event(SAMPLES[0])
    second = new_event(SAMPLES[3], incident_id="inc-1", source="t", caused_by=first)
    third = new_event(SAMPLES[4], incident_id="inc-1", source="t", caused_by=second)
    assert first.correlation_id == first.id
    assert second.causation_id == first.id
    assert third.causation_id == second.id
    assert third.correlation_id == first.id


def test_derived_ids_are_kept() -> None:
    fixed = uuid.uuid5(uuid.NAMESPACE_URL, "alert/f1")
    e = new_event(SAMPLES[0], incident_id="i", source="t", event_id=fixed, occurred_at=T0)
    assert e.id == fixed
    assert parse_event(e.to_json()).id == fixed


def test_a_payload_that_is_not_registered_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        new_event(AnomalyDetected.__base__(), incident_id="i", source="t")  # type: ignore[misc]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300) | json_values.map(orjson.dumps))
def test_arbitrary_bytes_are_refused_cleanly(raw: bytes) -> None:
    """Whatever lands on the stream, parsing either yields an event or says why not."""
    try:
        parse_event(raw)
    except MalformedEvent as exc:
        assert exc.reason
