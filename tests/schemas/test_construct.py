"""A model built from a decoded record is accepted only when model_validate accepts it too,
and is then the same model (`schemas/_impl/construct.py`)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from onceflow.schemas import (
    EVENT_MODELS,
    Event,
    EventValidationError,
    SingleObjectCodec,
    WorkUnitSubmitted,
    default_registry,
)
from onceflow.schemas._impl.construct import model_builder
from tests.schemas.test_compiled import _named, _random_value
from tests.schemas.test_contracts import sample_event

MODELS = sorted(EVENT_MODELS, key=lambda m: m.EVENT_TYPE)


def _decoded(event: Event) -> dict[str, Any]:
    """The record the codec's reader gives for an event, before any model is made."""
    return SingleObjectCodec().decode_record(SingleObjectCodec().encode(event))[1]


def _same(built: BaseModel, validated: BaseModel) -> None:
    assert type(built) is type(validated)
    assert built == validated
    assert built.__getstate__() == validated.__getstate__()
    assert built.model_dump() == validated.model_dump()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.EVENT_TYPE)
def test_every_event_type_has_a_builder_that_gives_what_model_validate_gives(
        model: type[Event]) -> None:
    entry = default_registry().by_type[model.EVENT_TYPE]
    assert entry.build is not None
    record = _decoded(sample_event(model))
    built = entry.build(dict(record))
    assert built is not None, "a valid sample was not built"
    _same(built, model.model_validate(record))
    # The codec's hot path reads and builds in one call; trailing bytes are declined.
    data = SingleObjectCodec().encode(sample_event(model))
    assert entry.decode_body is not None
    _same(entry.decode_body(data, 10), model.model_validate(record))
    assert entry.decode_body(data + b"\x00", 10) is None


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.EVENT_TYPE)
def test_a_builder_accepts_no_value_that_model_validate_refuses(model: type[Event]) -> None:
    """Every field of a valid record, replaced by random values of its Avro type (negative
    numbers, empty and long strings, any enum symbol): the builder either declines or
    agrees with pydantic."""
    entry = default_registry().by_type[model.EVENT_TYPE]
    assert entry.build is not None
    rng = random.Random(model.EVENT_TYPE)
    named = _named(entry.schema, {})
    base = _decoded(sample_event(model))
    declined = accepted = 0
    for field in entry.schema["fields"]:
        for _ in range(12):
            record = {**base, field["name"]: _random_value(rng, field["type"], named)}
            built = entry.build(dict(record))
            try:
                validated = model.model_validate(record)
            except ValidationError:
                assert built is None, f"{field['name']}={record[field['name']]!r} was built"
                declined += 1
                continue
            if built is not None:
                _same(built, validated)
                accepted += 1
    assert accepted > 0


def test_a_record_the_builder_declines_gets_pydantics_error_from_the_codec() -> None:
    codec = SingleObjectCodec()
    record = _decoded(WorkUnitSubmitted(event_id="e1", occurred_at=1, work_unit_id="u"))
    record["max_attempts"] = 0
    data = codec.encode_record("workunit.submitted", record)
    with pytest.raises(EventValidationError, match="max_attempts"):
        codec.decode(data)


def test_a_failed_check_leaves_the_record_untouched() -> None:
    """Nested models are made only once every check passed, so the dict handed on to
    model_validate is the decoded one."""
    entry = default_registry().by_type["workunit.submitted"]
    assert entry.build is not None
    record = _decoded(sample_event(WorkUnitSubmitted))
    record["llm_tokens"] = -1
    before = dict(record)
    assert entry.build(record) is None
    assert record == before and isinstance(record["input_ref"], dict)


def test_models_with_validators_or_their_own_configuration_get_no_builder() -> None:
    class Checked(BaseModel):
        name: str

        @field_validator("name")
        @classmethod
        def no_spaces(cls, v: str) -> str:
            return v.replace(" ", "")

    class Stripped(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True)
        name: str

    class Plain(BaseModel):
        name: str = Field(min_length=2)

    schema = {"type": "record", "name": "N", "fields": [{"name": "name", "type": "string"}]}
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        name: str

    assert model_builder(Checked, schema) is None
    assert model_builder(Stripped, schema) is None
    assert model_builder(Open, schema) is None
    build = model_builder(Plain, schema)
    assert build is not None
    assert build({"name": "x"}) is None
    assert build({"name": "xy"}) == Plain(name="xy")
    # A schema whose fields are not the model's: no builder.
    other = {"type": "record", "name": "N", "fields": [{"name": "other", "type": "string"}]}
    assert model_builder(Plain, other) is None


def test_a_copy_with_changes_leaves_other_built_events_fields_set_alone() -> None:
    """Built frozen models share one fields set; pydantic copies it before changing it."""
    codec = SingleObjectCodec()
    data = codec.encode(WorkUnitSubmitted(event_id="e1", occurred_at=1, work_unit_id="u"))
    first, second = codec.decode(data), codec.decode(data)
    before = set(second.model_fields_set)
    changed = first.model_copy(update={"priority": "p0"})
    assert changed.priority == "p0"
    assert second.model_fields_set == before == first.model_fields_set


def test_a_record_with_its_fields_in_another_order_is_left_to_pydantic() -> None:
    """An older writer's data, resolved by fastavro, may come in another order: the
    builder declines it, so the model's fields keep the model's order."""
    entry = default_registry().by_type["workunit.submitted"]
    assert entry.build is not None
    record = _decoded(sample_event(WorkUnitSubmitted))
    reordered = dict(reversed(list(copy.deepcopy(record).items())))
    assert entry.build(reordered) is None
    # a builder adopts the record it is given (nested dicts included): a copy of its own
    assert entry.build(copy.deepcopy(record)) is not None
    event = SingleObjectCodec().decode(
        SingleObjectCodec().encode_record("workunit.submitted", reordered))
    assert list(event.__dict__) == list(WorkUnitSubmitted.model_fields)
