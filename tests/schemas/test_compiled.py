"""The compiled Avro codec gives exactly what fastavro gives, for every event type."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas import (
    EVENT_MODELS,
    CodecError,
    Event,
    SingleObjectCodec,
    TruncatedEventError,
    default_registry,
)
from schemas._impl.compiled import compile_schema

_PRIMS = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}


def _named(t: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Every named type by its short name, so a reference resolves before its definition
    is drawn."""
    if isinstance(t, list):
        for branch in t:
            _named(branch, out)
    elif isinstance(t, dict):
        if t["type"] in ("record", "enum"):
            out[t["name"]] = t
        for f in t.get("fields", ()):
            _named(f["type"], out)
        for key in ("items", "values"):
            if key in t:
                _named(t[key], out)
    return out


def _random_value(rng: random.Random, t: Any, named: dict[str, Any]) -> Any:
    if isinstance(t, list):
        return _random_value(rng, rng.choice(t), named)
    if isinstance(t, str) and t not in _PRIMS:
        return _random_value(rng, named[t.rsplit(".", 1)[-1]], named)
    if isinstance(t, dict) and t["type"] in _PRIMS:
        t = t["type"]
    if t == "null":
        return None
    if t == "boolean":
        return rng.random() < 0.5
    if t == "int":
        return rng.randint(-(2**31), 2**31 - 1)
    if t == "long":
        return rng.choice([0, 1, -1, 63, 64, -65, 2**31, rng.randint(-(2**63), 2**63 - 1),
                           rng.randint(0, 2**41)])
    if t in ("float", "double"):
        return rng.choice([0.0, -1.5, 3.25, rng.uniform(-1e9, 1e9)])
    if t == "string":
        # Short (one-byte length), long (multi-byte length) and non-ASCII strings.
        n = rng.choice([0, 1, 5, 63, 64, 200])
        return "".join(rng.choice("ab€z✓é") for _ in range(n))
    if t == "bytes":
        return rng.randbytes(rng.choice([0, 3, 70]))
    kind = t["type"]
    if kind == "record":
        return {f["name"]: _random_value(rng, f["type"], named) for f in t["fields"]}
    if kind == "enum":
        return rng.choice(t["symbols"])
    if kind == "array":
        return [_random_value(rng, t["items"], named) for _ in range(rng.choice([0, 2, 70]))]
    if kind == "map":
        return {f"k{i}": _random_value(rng, t["values"], named)
                for i in range(rng.choice([0, 1, 66]))}
    raise AssertionError(t)


def _fastavro_bytes(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


def _fastavro_read(schema: Any, data: bytes) -> Any:
    return schemaless_reader(io.BytesIO(data), parse_schema(schema), None)


EVENT_TYPES = sorted(default_registry().by_type)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_schema_compiles(event_type: str) -> None:
    assert default_registry().for_type(event_type).compiled is not None


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_same_bytes_and_values_as_fastavro(event_type: str) -> None:
    entry = default_registry().for_type(event_type)
    assert entry.compiled is not None
    rng = random.Random(event_type)
    for _ in range(40):
        record = _random_value(rng, entry.schema, _named(entry.schema, {}))
        expected = _fastavro_bytes(entry.schema, record)
        assert entry.compiled.write(record) == expected
        decoded, end = entry.compiled.read(expected, 0)
        assert end == len(expected)
        assert decoded == _fastavro_read(entry.schema, expected)


USER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Probe", "namespace": "user.events",
    "fields": [
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "BLUE"]}},
        {"name": "again", "type": "Color"},
        {"name": "small", "type": "int"},
        {"name": "ratio", "type": "float"},
        {"name": "flag", "type": ["boolean", "null"], "default": True},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "xs", "type": {"type": "array", "items": "long"}},
            {"name": "tags", "type": {"type": "map", "values": ["null", "string"]}},
        ]}},
        {"name": "maybe", "type": ["null", "Inner"], "default": None},
    ],
}


def test_user_schema_with_enums_ints_floats_and_named_references() -> None:
    compiled = compile_schema(USER_SCHEMA)
    assert compiled is not None
    rng = random.Random(7)
    for _ in range(50):
        record = _random_value(rng, USER_SCHEMA, _named(USER_SCHEMA, {}))
        expected = _fastavro_bytes(USER_SCHEMA, record)
        assert compiled.write(record) == expected
        assert compiled.read(expected, 0)[0] == _fastavro_read(USER_SCHEMA, expected)


def test_missing_fields_take_their_defaults_as_fastavro_does() -> None:
    compiled = compile_schema(USER_SCHEMA)
    assert compiled is not None
    record = {"color": "RED", "again": "BLUE", "small": 3, "ratio": 0.5,
              "inner": {"xs": [1, 2], "tags": {}}}
    assert compiled.write(record) == _fastavro_bytes(USER_SCHEMA, record)


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "F", "fields": [
        {"name": "f", "type": {"type": "fixed", "name": "H", "size": 4}}]},
    {"type": "record", "name": "D", "fields": [
        {"name": "d", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
    {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "long", "string"]}]},
    {"type": "record", "name": "x(): pass\nimport os", "fields": []},
])
def test_what_is_not_compiled_is_left_to_fastavro(schema: dict[str, Any]) -> None:
    assert compile_schema(schema) is None


def test_blocks_with_byte_sizes_from_other_writers_are_read() -> None:
    """Java writers may emit a negative block count followed by the block's byte size."""
    schema = {"type": "record", "name": "A", "fields": [
        {"name": "xs", "type": {"type": "array", "items": "long"}}]}
    compiled = compile_schema(schema)
    assert compiled is not None
    # count -2 (zig-zag 3), block size 2, items 1 and 2 (zig-zag 2, 4), end 0
    data = bytes([3, 4, 2, 4, 0])
    assert compiled.read(data, 0) == ({"xs": [1, 2]}, 5)
    assert _fastavro_read(schema, data) == {"xs": [1, 2]}


def test_every_truncation_of_a_work_unit_is_a_clear_error() -> None:
    from tests.fixtures import submitted

    codec = SingleObjectCodec()
    blob = codec.encode(submitted(3))
    for cut in range(10, len(blob)):
        with pytest.raises(TruncatedEventError):
            codec.decode(blob[:cut])


def test_wrong_types_are_codec_errors_not_crashes() -> None:
    codec = SingleObjectCodec()
    with pytest.raises(CodecError, match=r"workunit\.submitted"):
        codec.encode_record("workunit.submitted", {"event_id": 5, "event_type": "x",
                                                   "occurred_at": 1})
    with pytest.raises(CodecError):
        codec.encode_record("workunit.submitted", {"event_id": "e", "event_type": "x",
                                                   "occurred_at": "soon"})


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.EVENT_TYPE)
def test_encoding_a_model_gives_the_bytes_of_its_dump(model: type[Event]) -> None:
    """The codec encodes plain models from their fields without `model_dump`: same bytes."""
    from tests.schemas.test_contracts import sample_event

    codec = SingleObjectCodec()
    event = sample_event(model)
    expected = codec.encode_record(model.EVENT_TYPE, event.model_dump())
    assert codec.encode(event) == expected
    assert codec.decode(expected) == event
