"""Deterministic identities: one rule each for caused envelopes and payload digests."""

from __future__ import annotations

from onceflow.schemas import ClockTick, WorkUnitSubmitted
from onceflow.streams.ids import caused_by, derive_event_id, payload_digest, restated


def _unit(**fields: object) -> WorkUnitSubmitted:
    return WorkUnitSubmitted.model_validate(
        {"event_id": "e1", "occurred_at": 10, "work_unit_id": "wu", "tenant_id": "t", **fields})


def test_a_caused_envelope_points_at_its_cause_and_takes_its_context() -> None:
    cause = _unit()
    env = caused_by(cause, "role")
    assert env["event_id"] == derive_event_id("e1", "role")
    assert env["causation_id"] == "e1" and env["occurred_at"] == 10
    assert (env["tenant_id"], env["work_unit_id"]) == ("t", "wu")
    assert caused_by(cause, "role", work_unit_id="other")["work_unit_id"] == "other"


def test_a_restated_input_keeps_its_body_under_a_derived_id() -> None:
    tick = ClockTick(event_id="t1", occurred_at=5, partition=2)
    again = restated(tick, "seen")
    assert again.partition == 2 and again.causation_id == "t1"
    assert again.event_id == derive_event_id("t1", "seen")


def test_the_payload_digest_ignores_the_envelope_but_not_the_payload() -> None:
    unit = _unit(simulated_ms=5)
    resent = unit.model_copy(update={"event_id": "e2", "occurred_at": 99,
                                     "causation_id": "x", "schema_version": 1})
    assert payload_digest(resent) == payload_digest(unit)
    assert payload_digest(_unit(simulated_ms=6)) != payload_digest(unit)
    assert payload_digest(_unit(simulated_ms=5, tenant_id="u")) != payload_digest(unit)
