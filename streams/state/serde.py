"""Canonical JSON for state values: sorted keys, no spaces, so equal state is equal bytes.

orjson, because state is serialised on every checkpoint of every hot-path
processor; its compact sorted output is canonical in the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps", "key_successor", "loads", "seen_key"]

_OPTIONS = orjson.OPT_SORT_KEYS


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTIONS)


def loads(data: bytes) -> Any:
    return orjson.loads(data)


def seen_key(generation: int, event_id: str) -> bytes:
    """A dedupe mark as stored (memory and RocksDB alike, so fingerprints compare),
    filed under the generation of logged time it was made in."""
    return b"d\x00" + generation.to_bytes(8, "big") + event_id.encode()


def key_successor(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with `prefix` (None: no such key):
    where a prefix read stops, in memory and in RocksDB alike."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
