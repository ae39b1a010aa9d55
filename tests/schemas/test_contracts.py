"""Every model mirrors its committed schema, round-trips, and stays readable by old readers."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from onceflow.schemas import (
    EVENT_MODELS,
    ContentRef,
    Event,
    LedgerLineItem,
    PlacementCandidate,
    SingleObjectCodec,
    WorkUnitScheduled,
    default_registry,
    schema_dir,
)
from onceflow.schemas._impl.avro_from_model import avro_schema_for

RELEASED = Path(schema_dir()).parent / "released"


def _sample_value(annotation_schema: Any, name: str) -> Any:
    t = annotation_schema
    if isinstance(t, list):
        return _sample_value(t[1] if t[0] == "null" else t[0], name)
    if isinstance(t, dict):
        if t["type"] == "array":
            return []
        if t["type"] == "map":
            return {}
        if t["type"] == "record":
            return {f["name"]: _sample_value(f["type"], f["name"]) for f in t["fields"]}
    return {"string": "x", "long": 1, "double": 0.5, "boolean": True, "bytes": b"\x00\x01"}[t]


def sample_event(model: type[Event]) -> Event:
    """A fully populated instance: every field set, including the optional ones."""
    schema = avro_schema_for(model)
    data: dict[str, Any] = {}
    for field in schema["fields"]:
        data[field["name"]] = _sample_value(field["type"], field["name"])
    data["event_type"] = model.EVENT_TYPE
    data["event_id"] = f"id-{model.EVENT_TYPE}"
    for key in list(data):
        default = model.model_fields[key].default
        if isinstance(default, str) and key != "event_id" and data[key] == "x":
            data[key] = default or "x"
        info = model.model_fields[key]
        if "Money" in str(info.annotation) or "Decimal" in str(info.annotation):
            data[key] = "12.345678"
        if key in ("sha256",):
            data[key] = "a" * 64
    if data.get("input_ref"):
        data["input_ref"] = {"sha256": "a" * 64, "size": 3, "media_type": "text/plain"}
    for ref_field in ("result_ref", "response_ref", "intent_ref", "parent_result_ref"):
        if ref_field in data:
            data[ref_field] = {"sha256": "b" * 64, "size": 9, "media_type": "application/json"}
    if data.get("session_limits"):
        data["session_limits"] = {"max_steps": 3, "max_attempts": 4, "max_llm_calls": 2,
                                  "max_tokens": 900, "max_cost_usd": "1.500000",
                                  "max_wall_time_ms": 60_000, "on_limit": "cancel"}
    return model.model_validate(_fix_literals(model, data))


def _fix_literals(model: type[Event], data: dict[str, Any]) -> dict[str, Any]:
    # Literal fields take their default (or first allowed value) instead of "x".
    import typing

    for key, info in model.model_fields.items():
        ann = info.annotation
        args = typing.get_args(ann)
        if typing.get_origin(ann) is typing.Literal:
            data[key] = info.default if isinstance(info.default, str) else args[0]
        elif args and all(typing.get_origin(a) is typing.Literal for a in args):
            data[key] = info.default if isinstance(info.default, str) else \
                typing.get_args(args[0])[0]
    return data


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.EVENT_TYPE)
def test_committed_avsc_matches_model(model: type[Event]) -> None:
    path = schema_dir() / f"{model.EVENT_TYPE}.avsc"
    assert path.exists(), f"missing {path}: regenerate with tests' helper"
    assert json.loads(path.read_text()) == avro_schema_for(model), (
        f"{path.name} and {model.__name__} disagree; regenerate the .avsc from the model"
    )


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.EVENT_TYPE)
def test_model_round_trips_through_its_schema(model: type[Event]) -> None:
    codec = SingleObjectCodec()
    event = sample_event(model)
    data = codec.encode(event)
    assert data[:2] == b"\xc3\x01"
    assert codec.decode(data) == event
    event_type, record = codec.decode_record(data)
    assert event_type == model.EVENT_TYPE
    assert model.model_validate(record) == event


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.EVENT_TYPE)
def test_header_is_crc64_fingerprint_of_canonical_form(model: type[Event]) -> None:
    schema = json.loads((schema_dir() / f"{model.EVENT_TYPE}.avsc").read_text())
    canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
    expected = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    data = SingleObjectCodec().encode(sample_event(model))
    assert data[2:10] == expected


def _released_versions() -> list[Path]:
    return sorted(p for p in RELEASED.iterdir() if p.is_dir())


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.EVENT_TYPE)
def test_old_readers_can_read_new_data(model: type[Event]) -> None:
    """Forward check: data written with the current schema is readable by every
    released reader schema, and data written by released writers reads into the
    current one (backward). A rename, retype or a new field without a default fails."""
    current = parse_schema(json.loads((schema_dir() / f"{model.EVENT_TYPE}.avsc").read_text()))
    event = sample_event(model)
    for version in _released_versions():
        path = version / f"{model.EVENT_TYPE}.avsc"
        if not path.exists():
            continue  # the type was added after this release
        old = parse_schema(json.loads(path.read_text()))
        buf = io.BytesIO()
        schemaless_writer(buf, current, event.model_dump())
        buf.seek(0)
        schemaless_reader(buf, current, old)  # raises on incompatibility
        old_record = {f["name"]: _sample_value(f["type"], f["name"])
                      for f in json.loads(path.read_text())["fields"]}
        buf = io.BytesIO()
        schemaless_writer(buf, old, old_record)
        buf.seek(0)
        schemaless_reader(buf, old, current)


def test_compatibility_check_catches_a_breaking_change() -> None:
    """The check above must be able to fail: a field added without a default breaks it."""
    schema = json.loads((schema_dir() / "workunit.submitted.avsc").read_text())
    breaking = json.loads(json.dumps(schema))
    breaking["fields"].append({"name": "new_required", "type": "string"})
    old_record = {f["name"]: _sample_value(f["type"], f["name"]) for f in schema["fields"]}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), old_record)
    buf.seek(0)
    from fastavro.read import SchemaResolutionError

    with pytest.raises(SchemaResolutionError):
        schemaless_reader(buf, parse_schema(schema), parse_schema(breaking))


def test_every_released_fingerprint_is_known_to_the_reader() -> None:
    registry = default_registry()
    for version in _released_versions():
        for path in version.glob("*.avsc"):
            from onceflow.schemas import avro_fingerprint

            assert avro_fingerprint(json.loads(path.read_text())) in registry.by_fingerprint


def test_money_is_exact_and_refuses_floats() -> None:
    item = sample_event(LedgerLineItem)
    assert isinstance(item, LedgerLineItem)
    assert item.total_usd == Decimal("12.345678")
    with pytest.raises(ValueError, match="not float"):
        LedgerLineItem.model_validate({**item.model_dump(), "total_usd": 0.1})


def test_nested_records_survive_round_trip() -> None:
    event = WorkUnitScheduled(
        event_id="e", occurred_at=1, work_unit_id="wu", selected_node_id="n1", attempt_index=1,
        score=0.8125, eligible_node_count=2, reason_code="best_score", scheduling_epoch=7,
        decided_at=5, lease_expires_at=30_005,
        candidates=[PlacementCandidate(node_id="n1", score=0.8125, capacity=1.0, load=0.5,
                                       trust=0.5, region=1.0, queue_depth=0,
                                       available_concurrency=4)],
        parent_result_refs=[ContentRef(sha256="c" * 64, size=1)],
    )
    codec = SingleObjectCodec()
    assert codec.decode(codec.encode(event)) == event
