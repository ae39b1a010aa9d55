"""Many Avro bodies of one schema decoded at once, into Arrow columns.

A sink that loads events into a columnar store (the ledger views) does not
need an object per event: it needs columns. Decoding record by record in
Python costs about 10 us for a 36-field line item; wrapping the bodies of a
batch in an in-memory Avro object container file (a header naming the
schema, then one block of the bodies laid end to end) lets polars' native
reader decode them in about 1.7 us each. The bytes are not copied or changed:
a single-object record is the header plus exactly the body such a block
holds.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ContainerBlock", "decode_bodies"]


def _long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(b: bytes) -> bytes:
    return _long(len(b)) + b


class ContainerBlock:
    """The container-file framing for one schema, built once."""

    def __init__(self, schema: dict[str, Any]) -> None:
        # The canonical form: the same binary encoding, without the defaults
        # and docs that polars' schema parser refuses.
        canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
        self._sync = os.urandom(16)
        self._header = (b"Obj\x01" + _long(2) + _string(b"avro.schema")
                        + _string(canonical.encode()) + _string(b"avro.codec")
                        + _string(b"null") + _long(0) + self._sync)
        self.field_names = [f["name"] for f in json.loads(canonical)["fields"]]

    def file(self, bodies: Sequence[bytes]) -> bytes:
        data = b"".join(bodies)
        return self._header + _long(len(bodies)) + _long(len(data)) + data + self._sync


def decode_bodies(block: ContainerBlock, bodies: Sequence[bytes]) -> pa.Table:
    """The bodies as one Arrow table, a column per field.

    Strings come as Arrow's string views, polars' own layout, so nothing is
    copied out of polars (`large_string` would copy every string once more).

    Raises `ValueError` when any body does not match the schema; the caller
    then finds the bad ones record by record.
    """
    import polars as pl

    if not bodies:
        raise ValueError("no bodies to decode")
    try:
        frame = pl.read_avro(io.BytesIO(block.file(bodies)))
    except BaseException as exc:  # a ComputeError, or a Rust panic (a BaseException)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise ValueError(f"a body does not match the schema: {exc}") from exc
    if frame.height != len(bodies):
        raise ValueError(f"decoded {frame.height} records from {len(bodies)} bodies")
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())
