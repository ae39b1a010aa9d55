"""The Avro codec: single-object encoding.

Single-object encoding (`C3 01` + 8-byte CRC-64-AVRO fingerprint + body)
needs no service: the fingerprint alone names the writer schema, and every
reader ships the released schemas (`schemas/released/`). There is no
schema-registry framing: nothing read a registry setting, and a codec for it
was only ever tested against a mock, so both were removed rather than
claimed.
"""

from __future__ import annotations

import io
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer
from pydantic import PlainSerializer, ValidationError, WrapSerializer

from onceflow.schemas._impl.errors import (
    CodecError,
    EventValidationError,
    NotAvroSingleObjectError,
    TruncatedEventError,
)
from onceflow.schemas._impl.events import Event, WorkUnitFailed, upcast_legacy_failure
from onceflow.schemas._impl.registry import (
    EventSchema,
    SchemaRegistry,
    default_registry,
)

__all__ = [
    "SINGLE_OBJECT_MARKER",
    "EventCodec",
    "SingleObjectCodec",
]

SINGLE_OBJECT_MARKER = b"\xc3\x01"
_HEADER_LEN = 10
_DECODE_ERRORS = (EOFError, StopIteration, IndexError, struct.error, ValueError, TypeError, KeyError)
_ENCODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, struct.error, OverflowError)


class EventCodec(Protocol):
    """What every processor, producer and CLI command uses to turn events into bytes."""

    registry: SchemaRegistry

    def encode(self, event: Event) -> bytes: ...

    def encode_record(self, event_type: str, record: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes) -> Event: ...

    def decode_record(self, data: bytes) -> tuple[str, dict[str, Any]]: ...


def _write_body(entry: EventSchema, record: dict[str, Any]) -> bytes:
    try:
        if entry.compiled is not None:
            return entry.compiled.write(record)
        buf = io.BytesIO()
        schemaless_writer(buf, entry.parsed, record)
    except _ENCODE_ERRORS as exc:
        raise CodecError(f"cannot encode {entry.event_type}: {type(exc).__name__}: {exc}"
                         ) from exc
    return buf.getvalue()


def _read_body(entry: EventSchema, current: EventSchema, data: bytes, start: int) -> dict[str, Any]:
    if entry is current and entry.compiled is not None:
        try:
            record, end = entry.compiled.read(data, start)
        except _DECODE_ERRORS as exc:
            raise TruncatedEventError(
                f"{entry.event_type} body is truncated or corrupt ({len(data)} bytes): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if end != len(data):
            raise TruncatedEventError(
                f"{entry.event_type} body has {len(data) - end} trailing bytes: "
                "the record is corrupt or was written with another schema"
            )
        return record
    buf = io.BytesIO(data)
    buf.seek(start)
    reader = None if entry is current else current.parsed
    try:
        decoded = schemaless_reader(buf, entry.parsed, reader)
    except _DECODE_ERRORS as exc:
        raise TruncatedEventError(
            f"{entry.event_type} body is truncated or corrupt at byte {buf.tell()} "
            f"of {len(data)}: {type(exc).__name__}: {exc}"
        ) from exc
    if buf.tell() != len(data):
        raise TruncatedEventError(
            f"{entry.event_type} body has {len(data) - buf.tell()} trailing bytes: "
            "the record is corrupt or was written with another schema"
        )
    if not isinstance(decoded, dict):
        raise CodecError(f"{entry.event_type} did not decode to a record")
    return decoded


def _validate(entry: EventSchema, record: dict[str, Any]) -> Event:
    """The record as its model. `entry` is the current schema, which `record` was
    decoded (or resolved) to, so its builder may trust the Avro types."""
    if entry.model is None:
        raise EventValidationError(f"event type {entry.event_type!r} has no model to validate into")
    if entry.build is not None:
        try:
            built = entry.build(record)
        except (KeyError, TypeError):  # not a record of this schema after all
            built = None
        if built is not None:
            return built
    try:
        return entry.model.model_validate(record)
    except ValidationError as exc:
        raise EventValidationError(f"{entry.event_type} breaks its contract: {exc}") from exc


_PLAIN = (str, int, float, bool, type(None))


def _is_plain(model: type[Event]) -> bool:
    """True when an instance's `__dict__` is what `model_dump()` gives: every field a
    str, int, float, bool, None, Literal, or a list or dict of str, with no serializer."""
    decorators = model.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers:
        return False
    for field in model.model_fields.values():
        if any(isinstance(m, PlainSerializer | WrapSerializer) for m in field.metadata):
            return False
        ann = field.annotation
        args = typing.get_args(ann)
        origin = typing.get_origin(ann)
        if ann in _PLAIN:
            continue
        if origin is typing.Literal and all(isinstance(a, str) for a in args):
            continue
        if origin in (typing.Union, types.UnionType) and all(a in _PLAIN for a in args):
            continue
        if (origin is list and args == (str,)) or (origin is dict and args == (str, str)):
            continue
        return False
    return True


#: older releases' records whose type had several meanings, read as their meaning's type
_UPCASTS: dict[type[Event], Callable[[Any], Event]] = {WorkUnitFailed: upcast_legacy_failure}


class SingleObjectCodec:
    """Avro single-object encoding; no external service needed."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or default_registry()
        # Per model class and per fingerprint: the schema found once (the hot
        # path encodes and decodes the same few types).
        self._encoders: dict[type[Event], tuple[EventSchema, bytes, bool] | None] = {}
        self._current: dict[bytes, EventSchema] = {}

    def _encoder(self, cls: type[Event]) -> tuple[EventSchema, bytes, bool] | None:
        """(schema, header, plain) for the model class of a registered type; None otherwise."""
        entry = self.registry.by_type.get(cls.EVENT_TYPE)
        if entry is None or entry.model is not cls:
            return None
        return entry, SINGLE_OBJECT_MARKER + entry.fingerprint, _is_plain(cls)

    def encode(self, event: Event) -> bytes:
        cls = type(event)
        try:
            found = self._encoders[cls]
        except KeyError:
            found = self._encoders[cls] = self._encoder(cls)
        if found is None:
            return self.encode_record(event.event_type, event.model_dump())
        entry, header, plain = found
        return header + _write_body(entry, event.__dict__ if plain else event.model_dump())

    def encode_record(self, event_type: str, record: dict[str, Any]) -> bytes:
        entry = self.registry.for_type(event_type)
        return SINGLE_OBJECT_MARKER + entry.fingerprint + _write_body(entry, record)

    def _entry(self, data: bytes) -> EventSchema:
        if len(data) < _HEADER_LEN:
            if data[:2] == SINGLE_OBJECT_MARKER[: len(data[:2])]:
                raise TruncatedEventError(
                    f"single-object header needs {_HEADER_LEN} bytes, got {len(data)}"
                )
            raise NotAvroSingleObjectError(
                f"{len(data)} bytes are not an Avro single-object record (no C3 01 marker)"
            )
        if data[:2] != SINGLE_OBJECT_MARKER:
            raise NotAvroSingleObjectError(
                f"expected the Avro single-object marker C3 01, got {data[:2].hex(' ').upper()}"
            )
        return self.registry.for_fingerprint(data[2:_HEADER_LEN])

    def decode_record(self, data: bytes) -> tuple[str, dict[str, Any]]:
        entry = self._entry(data)
        current = self.registry.for_type(entry.event_type)
        return entry.event_type, _read_body(entry, current, data, _HEADER_LEN)

    def decode(self, data: bytes) -> Event:
        """The event `data` holds, as the type of its meaning: a record an older release
        wrote under a type that then had several meanings comes as the one it has now."""
        event = self._decode(data)
        upcast = _UPCASTS.get(type(event))
        return event if upcast is None else upcast(event)

    def _decode(self, data: bytes) -> Event:
        current = self._current.get(data[2:_HEADER_LEN])
        if current is not None and current.decode_body is not None \
                and data[:2] == SINGLE_OBJECT_MARKER:
            # The hot path: one call reads and builds. Anything it declines or fails
            # on goes the slow way below, which names the problem.
            try:
                event = current.decode_body(data, _HEADER_LEN)
            except _DECODE_ERRORS:
                event = None
            if event is not None:
                return event
        if current is None:
            entry = self._entry(data)
            current = self.registry.for_type(entry.event_type)
            if entry is not current:  # an older writer's data: resolved by fastavro
                return _validate(current, _read_body(entry, current, data, _HEADER_LEN))
            self._current[entry.fingerprint] = current
        elif data[:2] != SINGLE_OBJECT_MARKER:
            self._entry(data)  # raises the error that says what is wrong with the header
        return _validate(current, _read_body(current, current, data, _HEADER_LEN))


