"""The compiled Avro codec gives exactly what fastavro gives, for every event type."""

from __future__ import annotations

import io
import random
import struct
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from onceflow.schemas import (
    EVENT_MODELS,
    CodecError,
    Event,
    SingleObjectCodec,
    TruncatedEventError,
    default_registry,
)
from onceflow.schemas._impl.compiled import CompiledSchema, compile_schema, native_available

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
#: the C extension, and the generated Python it stands in for
IMPLS = ["native", "python"]


def _compiled(schema: dict[str, Any], impl: str) -> CompiledSchema:
    compiled = compile_schema(schema, native=impl == "native")
    assert compiled is not None
    assert compiled.native == (impl == "native")
    return compiled


def test_the_c_extension_is_built_and_used() -> None:
    """`pip install` builds it wherever a C compiler is (optional in pyproject.toml, so a
    machine without one still installs): here it must have been built."""
    assert native_available()
    assert all(e.compiled is not None and e.compiled.native
               for e in default_registry().by_type.values())


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_schema_compiles(event_type: str) -> None:
    assert default_registry().for_type(event_type).compiled is not None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_same_bytes_and_values_as_fastavro(event_type: str, impl: str) -> None:
    entry = default_registry().for_type(event_type)
    compiled = _compiled(entry.schema, impl)
    rng = random.Random(event_type)
    for _ in range(40):
        record = _random_value(rng, entry.schema, _named(entry.schema, {}))
        expected = _fastavro_bytes(entry.schema, record)
        assert compiled.write(record) == expected
        decoded, end = compiled.read(expected, 0)
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


@pytest.mark.parametrize("impl", IMPLS)
def test_user_schema_with_enums_ints_floats_and_named_references(impl: str) -> None:
    compiled = _compiled(USER_SCHEMA, impl)
    rng = random.Random(7)
    for _ in range(50):
        record = _random_value(rng, USER_SCHEMA, _named(USER_SCHEMA, {}))
        expected = _fastavro_bytes(USER_SCHEMA, record)
        assert compiled.write(record) == expected
        assert compiled.read(expected, 0)[0] == _fastavro_read(USER_SCHEMA, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_missing_fields_take_their_defaults_as_fastavro_does(impl: str) -> None:
    compiled = _compiled(USER_SCHEMA, impl)
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


@pytest.mark.parametrize("impl", IMPLS)
def test_blocks_with_byte_sizes_from_other_writers_are_read(impl: str) -> None:
    """Java writers may emit a negative block count followed by the block's byte size."""
    schema = {"type": "record", "name": "A", "fields": [
        {"name": "xs", "type": {"type": "array", "items": "long"}}]}
    compiled = _compiled(schema, impl)
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


_READ_ERRORS = (EOFError, IndexError, ValueError, struct.error)


def _fits_64_bits(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_fits_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return all(_fits_64_bits(v) for v in value)
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def _outcome(compiled: CompiledSchema, data: bytes) -> str:
    try:
        record, end = compiled.read(data, 0)
    except _READ_ERRORS:
        return "error"
    # An Avro long has 64 bits; the generated Python reads a longer varint into a
    # bigger int, where the C reader refuses it.
    if not _fits_64_bits(record):
        return "error"
    return repr((record, end))  # repr: a NaN read twice is the same NaN


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_the_c_reader_agrees_with_the_python_one_on_corrupt_bodies(event_type: str) -> None:
    """Bodies cut short, with bytes overwritten, or with bytes added: both readers give
    the same record or both raise one of the errors the codec turns into a CodecError
    (never a crash of the process)."""
    entry = default_registry().for_type(event_type)
    native, python = _compiled(entry.schema, "native"), _compiled(entry.schema, "python")
    rng = random.Random(f"corrupt {event_type}")
    named = _named(entry.schema, {})
    errors = 0
    for _ in range(60):
        body = bytearray(_fastavro_bytes(entry.schema, _random_value(rng, entry.schema, named)))
        how = rng.choice(["cut", "flip", "add"])
        if how == "cut":
            body = body[:rng.randrange(len(body) + 1)]
        elif how == "flip" and body:
            for _ in range(rng.choice([1, 2, 5])):
                body[rng.randrange(len(body))] = rng.randrange(256)
        else:
            body[rng.randrange(len(body) + 1):0] = rng.randbytes(rng.choice([1, 3, 12]))
        got = _outcome(native, bytes(body))
        assert got == _outcome(python, bytes(body)), (how, bytes(body).hex())
        errors += got == "error"
    assert errors > 0


def test_the_c_writer_refuses_what_does_not_fit_the_schema() -> None:
    compiled = _compiled(USER_SCHEMA, "native")
    good = {"color": "RED", "again": "BLUE", "small": 3, "ratio": 0.5,
            "inner": {"xs": [1, 2], "tags": {"a": None}}}
    assert compiled.write(good) == _fastavro_bytes(USER_SCHEMA, good)
    bad: list[tuple[dict[str, Any], type[Exception]]] = [
        ({**good, "color": "GREEN"}, KeyError),
        ({**good, "small": "3"}, TypeError),
        ({**good, "small": 2.5}, TypeError),
        ({**good, "small": 2**64}, OverflowError),
        ({**good, "ratio": "x"}, TypeError),
        ({**good, "inner": {"xs": [1], "tags": {"a": 5}}}, TypeError),
        ({**good, "inner": {"xs": None, "tags": {}}}, TypeError),
        ({**good, "inner": "nope"}, TypeError),
        ({k: v for k, v in good.items() if k != "small"}, KeyError),
    ]
    for record, error in bad:
        with pytest.raises(error):
            compiled.write(record)
