"""State fingerprints: sha256 over canonically ordered state, for replay checks."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

__all__ = ["fingerprint_items", "fingerprint_partitions"]


def _feed(h: hashlib._Hash, key: bytes, value: bytes) -> None:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") hash differently.
    h.update(struct.pack(">I", len(key)))
    h.update(key)
    h.update(struct.pack(">I", len(value)))
    h.update(value)


def fingerprint_items(items: Iterable[tuple[bytes, bytes]]) -> str:
    """The fingerprint of one key-value state, whatever order the items come in."""
    h = hashlib.sha256()
    for key, value in sorted(items):
        _feed(h, key, value)
    return h.hexdigest()


def fingerprint_partitions(partitions: Mapping[int, Iterable[tuple[bytes, bytes]]]) -> str:
    """The fingerprint of a processor's state across its partitions."""
    h = hashlib.sha256()
    for partition in sorted(partitions):
        h.update(struct.pack(">I", partition))
        h.update(bytes.fromhex(fingerprint_items(partitions[partition])))
    return h.hexdigest()
