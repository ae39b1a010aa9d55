"""One declaration per event class, and one meaning per event type across releases."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from fastavro import parse_schema, schemaless_writer
from pydantic import ValidationError

from onceflow.schemas import (
    EVENT_MODELS,
    SINGLE_OBJECT_MARKER,
    ClaimGranted,
    Event,
    SingleObjectCodec,
    WorkUnitCompleted,
    WorkUnitResultReported,
    WorkUnitSubmitted,
    avro_fingerprint,
    schema_dir,
)

RELEASED = schema_dir().parent / "released"


def test_a_class_declares_its_type_once_and_the_rest_follows() -> None:
    class ThingHappened(Event, event_type="thing.happened"):
        size: int = 0

    assert ThingHappened.EVENT_TYPE == "thing.happened"
    assert ThingHappened.AVRO_NAME == "ThingHappened"
    assert ThingHappened(event_id="e", occurred_at=1).event_type == "thing.happened"
    with pytest.raises(ValidationError):
        ThingHappened(event_id="e", occurred_at=1, event_type="other.type")


def test_every_event_class_has_its_own_type_and_avro_name() -> None:
    types = [m.EVENT_TYPE for m in EVENT_MODELS]
    names = [m.AVRO_NAME for m in EVENT_MODELS]
    assert all(types) and len(set(types)) == len(types)
    assert len(set(names)) == len(names)
    for model in EVENT_MODELS:
        assert model.model_fields["event_type"].default == model.EVENT_TYPE


def test_the_agent_report_and_the_settlement_are_different_types() -> None:
    assert WorkUnitResultReported.EVENT_TYPE != WorkUnitCompleted.EVENT_TYPE
    assert "accepted" not in WorkUnitResultReported.model_fields
    assert "settlement_reason" not in WorkUnitResultReported.model_fields


def test_the_latest_release_is_the_current_schema_set() -> None:
    """A release freezes what is current: every current schema is in the newest release."""
    newest = max((p for p in RELEASED.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))
    for path in sorted(schema_dir().glob("*.avsc")):
        released = newest / path.name
        assert released.exists(), f"{path.name} is not in {newest.name}"
        assert json.loads(released.read_text()) == json.loads(path.read_text()), path.name


def _written_by_release(version: str, event_type: str, record: dict[str, object]) -> bytes:
    schema = json.loads((RELEASED / version / f"{event_type}.avsc").read_text())
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(schema), record)
    return SINGLE_OBJECT_MARKER + avro_fingerprint(schema) + body.getvalue()


def test_a_release_1_agent_report_still_decodes_as_what_it_was() -> None:
    """Release 1 agents reported results as `workunit.completed` without a settlement reason."""
    data = _written_by_release("v1", "workunit.completed", {
        "event_id": "r1", "event_type": "workunit.completed", "occurred_at": 5,
        "tenant_id": "acme", "execution_session_id": "s", "work_unit_id": "wu",
        "causation_id": None, "schema_version": 1, "selected_node_id": "n1",
        "attempt_index": 1, "correlation_id": None, "result_ref": None,
        "cpu_seconds": "0.250000", "llm_tokens": 0, "started_at": 1, "finished_at": 4,
        "kind": "cpu", "accepted": False, "settlement_reason": "", "incarnation": "i1",
        "submitted_at": 0,
    })
    event = SingleObjectCodec().decode(data)
    assert isinstance(event, WorkUnitCompleted)
    assert event.settlement_reason == "" and not event.accepted
    assert event.cpu_seconds == Decimal("0.250000") and event.schema_version == 1


def test_a_release_1_claim_grant_reads_with_the_new_fields_empty() -> None:
    data = _written_by_release("v1", "workunit.claim.granted", {
        "event_id": "g1", "event_type": "workunit.claim.granted", "occurred_at": 5,
        "tenant_id": "acme", "execution_session_id": "s", "work_unit_id": "wu",
        "causation_id": None, "schema_version": 1, "node_id": "n1", "attempt_index": 1,
        "lease_expires_at": 9, "idempotency_key": None, "incarnation": "i1",
    })
    event = SingleObjectCodec().decode(data)
    assert isinstance(event, ClaimGranted)
    assert event.node_id == "n1" and event.selected_node_id == ""


def test_events_say_they_were_written_with_the_newest_release() -> None:
    newest = max(int(p.name[1:]) for p in RELEASED.iterdir() if p.is_dir())
    assert WorkUnitSubmitted(event_id="e", occurred_at=1).schema_version == newest
