"""In-memory state: what reducer unit tests and replays into scratch state use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from onceflow.streams.state import serde

__all__ = ["MemoryState"]


class MemoryState:
    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        # Values are kept serialised so that accidental mutation of a value
        # returned by get() cannot change the state behind the reducer's back.
        self._data: dict[str, bytes] = {k: serde.dumps(v) for k, v in (initial or {}).items()}
        self._seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._data.get(key)
        return default if raw is None else serde.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self._data[key] = serde.dumps(value)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, Any]]:
        keys = [k for k in self._data if k.startswith(prefix) and (stop is None or k < stop)
                and (start is None or k >= start)]
        for key in sorted(keys, key=str.encode):
            yield key, serde.loads(self._data[key])

    def has_seen(self, event_id: str) -> bool:
        return event_id in self._seen

    def mark_seen(self, event_id: str) -> None:
        self._seen.add(event_id)

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """The same keys `PartitionStore.raw_items` yields, so fingerprints compare."""
        for key in sorted(self._data, key=str.encode):
            yield b"s\x00" + key.encode(), self._data[key]
        for event_id in sorted(self._seen, key=str.encode):
            yield b"d\x00" + event_id.encode(), b"1"

    def copy(self) -> MemoryState:
        """An independent copy (values are bytes, so a shallow copy of each map is one):
        what a simulated restart from a checkpoint starts from."""
        out = MemoryState()
        out._data = dict(self._data)
        out._seen = set(self._seen)
        return out

    def __len__(self) -> int:
        return len(self._data)
