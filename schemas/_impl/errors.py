"""Typed codec errors: the dead-letter router records their class and text."""

from __future__ import annotations

__all__ = [
    "CodecError",
    "EventValidationError",
    "NotAvroSingleObjectError",
    "TruncatedEventError",
    "UnknownEventTypeError",
    "UnknownSchemaError",
]


class CodecError(ValueError):
    """Bytes that cannot become an onceflow event (or an event that cannot become bytes)."""


class NotAvroSingleObjectError(CodecError):
    """The bytes do not start with a known framing marker (C3 01, or 00 with a registry)."""


class UnknownSchemaError(CodecError):
    """The writer schema's fingerprint or registry id is not one this reader knows."""


class TruncatedEventError(CodecError):
    """The header or the Avro body ended before the schema said it would."""


class UnknownEventTypeError(CodecError):
    """No schema is registered for this event type."""


class EventValidationError(CodecError):
    """The Avro body decoded, but the event breaks its model's rules."""
