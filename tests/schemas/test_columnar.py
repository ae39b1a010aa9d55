"""Bodies decoded a batch at a time give the same values as the codec, record by record."""

from __future__ import annotations

import random
from typing import Any

import pytest

from onceflow.schemas import ContainerBlock, SingleObjectCodec, decode_bodies, default_registry
from tests.schemas.test_compiled import _named, _random_value


def _line_items(n: int, seed: int) -> list[dict[str, Any]]:
    schema = default_registry().for_type("ledger.line_item").schema
    rng = random.Random(seed)
    return [_random_value(rng, schema, _named(schema, {})) for _ in range(n)]


def test_a_batch_of_line_items_decodes_to_the_codecs_values() -> None:
    codec = SingleObjectCodec()
    entry = codec.registry.for_type("ledger.line_item")
    records = _line_items(300, seed=1)
    blobs = [codec.encode_record("ledger.line_item", r) for r in records]
    table = decode_bodies(ContainerBlock(entry.schema), [b[10:] for b in blobs])
    assert table.num_rows == len(records)
    assert table.column_names == [f["name"] for f in entry.schema["fields"]]
    assert table.to_pylist() == [codec.decode_record(b)[1] for b in blobs]


def test_a_corrupt_body_fails_the_batch_with_a_value_error() -> None:
    codec = SingleObjectCodec()
    entry = codec.registry.for_type("ledger.line_item")
    bodies = [codec.encode_record("ledger.line_item", r)[10:] for r in _line_items(20, seed=2)]
    bodies[7] = bodies[7][:5]  # truncated: every record after it is misaligned
    with pytest.raises(ValueError):
        decode_bodies(ContainerBlock(entry.schema), bodies)


def test_an_empty_batch_is_refused() -> None:
    entry = default_registry().for_type("ledger.line_item")
    with pytest.raises(ValueError, match="no bodies"):
        decode_bodies(ContainerBlock(entry.schema), [])
