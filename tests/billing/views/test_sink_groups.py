"""How the sink gathers decoded line items into inserts: no broker, no database.

Catching up, the sink inserts whole DuckDB row groups and carries the rest
over; the offsets committed with each insert must be exactly those after the
rows it holds, or a restart would lose or repeat a line item.
"""

from __future__ import annotations

import random

import pyarrow as pa

from onceflow.billing.views._impl.sink import _Decoded

_SCHEMA = pa.schema([("line_item_id", pa.string()), ("_partition", pa.int32()),
                     ("_offset", pa.int64())])


def _read(rng: random.Random, positions: dict[int, int], n: int) -> tuple[
        pa.Table, dict[int, int]]:
    """`n` records read over three partitions, a third of them not line items (holds)."""
    rows: list[dict[str, object]] = []
    advanced: dict[int, int] = {}
    for _ in range(n):
        p = rng.randrange(3)
        o = positions[p]
        positions[p] = advanced[p] = o + 1
        if rng.random() < 0.67:
            rows.append({"line_item_id": f"{p}-{o}", "_partition": p, "_offset": o})
    return pa.Table.from_pylist(rows, schema=_SCHEMA), advanced


def test_whole_row_groups_are_taken_with_the_offsets_of_what_stays_behind() -> None:
    rng = random.Random(7)
    positions = {0: 0, 1: 0, 2: 0}
    decoded = _Decoded()
    committed = {0: 0, 1: 0, 2: 0}
    inserted: list[str] = []
    read: list[str] = []
    for _ in range(40):
        table, advanced = _read(rng, positions, rng.randrange(0, 25))
        read += table.column("line_item_id").to_pylist()
        decoded.add([table], advanced)
        taken = decoded.take(16)
        if taken is None:
            continue
        tables, offsets = taken
        rows = [r for t in tables for r in t.to_pylist()]
        assert len(rows) % 16 == 0 and rows
        inserted += [r["line_item_id"] for r in rows]
        committed.update(offsets)
        # exactly-once: every row inserted lies below its partition's committed offset,
        # every row still held lies at or above it
        assert all(r["_offset"] < committed[r["_partition"]] for r in rows)
        held = [r for t in decoded.tables for r in t.to_pylist()]
        assert all(r["_offset"] >= committed[r["_partition"]] for r in held)
    table, advanced = _read(rng, positions, 9)  # a last, short read: caught up
    read += table.column("line_item_id").to_pylist()
    decoded.add([table], advanced)
    rest = decoded.take(None)  # the rest, with every read position
    assert rest is not None
    inserted += [r["line_item_id"] for t in rest[0] for r in t.to_pylist()]
    committed.update(rest[1])
    assert inserted == read  # in read order, each once
    assert committed == positions
    assert decoded.take(None) is None


def test_less_than_a_row_group_waits_unless_caught_up() -> None:
    decoded = _Decoded()
    table = pa.Table.from_pylist([{"line_item_id": "a", "_partition": 0, "_offset": 5}],
                                 schema=_SCHEMA)
    decoded.add([table], {0: 6, 1: 3})
    assert decoded.take(16) is None
    assert decoded.take(None) == ([table], {0: 6, 1: 3})


def test_records_that_are_no_line_items_still_advance_the_offsets() -> None:
    decoded = _Decoded()
    decoded.add([], {2: 40})  # a batch of holds and settlements only
    assert decoded.take(None) == ([], {2: 40})


def test_a_slow_decoded_part_goes_with_everything_uncut() -> None:
    fast = pa.Table.from_pylist([{"line_item_id": f"f{i}", "_partition": 0, "_offset": i}
                                 for i in range(20)], schema=_SCHEMA)
    slow = pa.Table.from_pylist([{"line_item_id": "s", "_partition": 1, "_offset": 0}],
                                schema=_SCHEMA.append(pa.field("total_usd", pa.string())))
    decoded = _Decoded()
    decoded.add([fast, slow], {0: 20, 1: 1})
    assert decoded.take(16) == ([fast, slow], {0: 20, 1: 1})


def test_a_fast_decoded_batch_that_breaks_the_line_items_contract_is_sent_the_slow_way() -> None:
    """The fast path checks what every other reader's validation checks: no negative amount
    or count, and only the line item types the ledger writes."""
    from onceflow.billing.views._impl.sink import breaks_contract
    from onceflow.schemas import ContainerBlock, LedgerLineItem, SingleObjectCodec, decode_bodies
    from tests.billing.views.fixtures import ledger_items

    codec = SingleObjectCodec()
    block = ContainerBlock(codec.registry.for_type(LedgerLineItem.EVENT_TYPE).schema)
    items = ledger_items(8)

    def fast(edit: dict[str, object] | None = None) -> pa.Table:
        bodies = []
        for i, item in enumerate(items):
            _, record = codec.decode_record(codec.encode(item))
            if edit is not None and i == 3:
                record.update(edit)
            bodies.append(codec.encode_record(LedgerLineItem.EVENT_TYPE, record)[10:])
        return decode_bodies(block, bodies)

    assert not breaks_contract(fast())
    assert breaks_contract(fast({"line_item_type": "free_lunch"}))
    assert breaks_contract(fast({"llm_tokens": -1}))
    assert breaks_contract(fast({"total_usd": "-0.100000"}))
