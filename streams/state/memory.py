"""In-memory state: what reducer unit tests and replays into scratch state use."""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, insort
from collections.abc import Iterator
from typing import Any

from onceflow.streams.state import serde
from onceflow.streams.state.generations import MarkGenerations
from onceflow.streams.state.serde import seen_key

__all__ = ["MemoryState"]


class MemoryState:
    def __init__(self, initial: dict[str, Any] | None = None, *, horizon_ms: int = 0,
                 min_marks: int = 0) -> None:
        # Values are kept serialised so that accidental mutation of a value
        # returned by get() cannot change the state behind the reducer's back.
        self._data: dict[str, bytes] = {k: serde.dumps(v) for k, v in (initial or {}).items()}
        #: the keys in order (code point order is UTF-8's byte order, RocksDB's), so a
        #: prefix read looks at its own range only
        self._keys: list[str] = sorted(self._data)
        #: dedupe marks by generation, kept as `PartitionStore` keeps them
        self._seen: dict[int, set[str]] = {}
        self.marks = MarkGenerations(horizon_ms, min_marks)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._data.get(key)
        return default if raw is None else serde.loads(raw)

    def set(self, key: str, value: Any) -> None:
        if key not in self._data:
            insort(self._keys, key)
        self._data[key] = serde.dumps(value)

    def delete(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            del self._keys[bisect_left(self._keys, key)]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, Any]]:
        first = prefix if start is None or start < prefix else start
        # the range's keys, found by bisection: a slice of the rest of the key list would
        # copy the whole tail on every read
        ordered = self._keys
        i = bisect_left(ordered, first)
        if stop is not None and stop < prefix + "\U0010ffff":
            j = bisect_left(ordered, stop, i)
        else:
            j = bisect_left(ordered, prefix + "\U0010ffff", i) if prefix else len(ordered)
        keys = [key for key in ordered[i:j] if key.startswith(prefix)]
        for key in keys:
            yield key, serde.loads(self._data[key])

    def has_seen(self, event_id: str) -> bool:
        gen = self.marks.generation
        return event_id in self._seen.get(gen, ()) or event_id in self._seen.get(gen - 1, ())

    def mark_seen(self, event_id: str, at: int = 0) -> None:
        """As `PartitionStore.mark_seen`: the clock moves, old generations go."""
        drop_below = self.marks.mark(at)
        if drop_below is not None:
            for old in [g for g in self._seen if g < drop_below]:
                del self._seen[old]
        self._seen.setdefault(self.marks.generation, set()).add(event_id)

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """The same keys `PartitionStore.raw_items` yields, so fingerprints compare."""
        for key in sorted(self._data, key=str.encode):
            yield b"s\x00" + key.encode(), self._data[key]
        for gen in sorted(self._seen):
            for event_id in sorted(self._seen[gen], key=str.encode):
                yield seen_key(gen, event_id), b"1"

    def copy(self) -> MemoryState:
        """An independent copy (values are bytes, so a shallow copy of each map is one):
        what a simulated restart from a checkpoint starts from."""
        out = MemoryState()
        out._data = dict(self._data)
        out._keys = list(self._keys)
        out._seen = {g: set(ids) for g, ids in self._seen.items()}
        out.marks = dataclasses.replace(self.marks)
        return out

    def __len__(self) -> int:
        return len(self._data)
