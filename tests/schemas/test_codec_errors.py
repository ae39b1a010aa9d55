"""Bad bytes raise clear, typed errors; Confluent framing works through a registry."""

from __future__ import annotations

import pytest

from onceflow.schemas import (
    NotAvroSingleObjectError,
    SingleObjectCodec,
    TruncatedEventError,
    UnknownEventTypeError,
    UnknownSchemaError,
)
from tests.fixtures import submitted


def test_unknown_fingerprint_is_named() -> None:
    data = b"\xc3\x01" + b"\x11" * 8 + b"\x00"
    with pytest.raises(UnknownSchemaError, match="1111111111111111"):
        SingleObjectCodec().decode(data)


@pytest.mark.parametrize("cut", [3, 9, 11, 20, -1])
def test_truncated_record_is_reported(cut: int) -> None:
    data = SingleObjectCodec().encode(submitted(1))
    with pytest.raises(TruncatedEventError):
        SingleObjectCodec().decode(data[:cut])


def test_trailing_garbage_is_reported() -> None:
    data = SingleObjectCodec().encode(submitted(1))
    with pytest.raises(TruncatedEventError, match="trailing"):
        SingleObjectCodec().decode(data + b"\x00\x00")


def test_random_bytes_are_not_single_object() -> None:
    with pytest.raises(NotAvroSingleObjectError, match="C3 01"):
        SingleObjectCodec().decode(b"hello world, this is not avro")


def test_unknown_event_type_lists_the_known_ones() -> None:
    with pytest.raises(UnknownEventTypeError, match=r"workunit\.submitted"):
        SingleObjectCodec().encode_record("no.such.event", {})


@pytest.mark.parametrize("amount", ["abc", "", "1.2.3"])
def test_an_amount_that_is_no_decimal_is_a_validation_error(amount: str) -> None:
    """decimal's own InvalidOperation used to escape the codec (and crash a processor
    instead of dead-lettering the record)."""
    from onceflow.schemas import EventValidationError, LedgerChargeHeld
    from tests.schemas.test_contracts import sample_event

    codec = SingleObjectCodec()
    record = codec.decode_record(codec.encode(sample_event(LedgerChargeHeld)))[1]
    money = [k for k, f in LedgerChargeHeld.model_fields.items() if "Decimal" in str(f.annotation)]
    assert money
    record[money[0]] = amount
    with pytest.raises(EventValidationError, match="not a decimal amount"):
        codec.decode(codec.encode_record("ledger.charge.held", record))
