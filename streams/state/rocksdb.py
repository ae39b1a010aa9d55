"""RocksDB state for one processor partition, stored together with its offsets.

Following quixstreams' checkpoint discipline: a batch's state changes and the
input and fact offsets they reflect are written in one RocksDB write batch,
after the batch's outputs were flushed to Kafka. A crash therefore leaves a
checkpoint that is either wholly before or wholly after a batch.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, WriteBatch

from streams.state import serde

__all__ = ["PartitionStore", "open_partition_store"]

_STATE = b"s\x00"
_SEEN = b"d\x00"
_META = b"m\x00"
_FACT_OFFSET = _META + b"fact-offset"
_DELETED = None


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return opts


class PartitionStore:
    """The `State` a reducer sees, plus the dedupe set and offsets the shell keeps."""

    def __init__(self, path: Path, partition: int) -> None:
        self.path = path
        self.partition = partition
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        self._dirty: dict[bytes, bytes | None] = {}
        self._offsets: dict[str, int] = {}
        self.fresh = self._db.get(_FACT_OFFSET) is None

    # -- State protocol ------------------------------------------------------------

    def _raw(self, key: bytes) -> bytes | None:
        if key in self._dirty:
            return self._dirty[key]
        value = self._db.get(key)
        return value if value is None else bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._raw(_STATE + key.encode())
        return default if raw is None else serde.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self._dirty[_STATE + key.encode()] = serde.dumps(value)

    def delete(self, key: str) -> None:
        self._dirty[_STATE + key.encode()] = _DELETED

    def __contains__(self, key: str) -> bool:
        return self._raw(_STATE + key.encode()) is not None

    def _scan(self, prefix: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        merged: dict[bytes, bytes | None] = {}
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix) or (stop is not None and key >= stop):
                break
            merged[key] = bytes(it.value())
            it.next()
        for key, value in self._dirty.items():
            if key.startswith(prefix) and (stop is None or key < stop):
                merged[key] = value
        for key in sorted(merged):
            value = merged[key]
            if value is not None:
                yield key, value

    def items(self, prefix: str = "", stop: str | None = None) -> Iterator[tuple[str, Any]]:
        end = None if stop is None else _STATE + stop.encode()
        for key, value in self._scan(_STATE + prefix.encode(), end):
            yield key[len(_STATE):].decode(), serde.loads(value)

    # -- what the shell keeps ------------------------------------------------------------

    def has_seen(self, event_id: str) -> bool:
        return self._raw(_SEEN + event_id.encode()) is not None

    def mark_seen(self, event_id: str) -> None:
        self._dirty[_SEEN + event_id.encode()] = b"1"

    def input_offset(self, topic: str) -> int | None:
        if topic in self._offsets:
            return self._offsets[topic]
        raw = self._db.get(_META + b"in:" + topic.encode())
        return None if raw is None else int(bytes(raw))

    def set_input_offset(self, topic: str, offset: int) -> None:
        self._offsets[topic] = offset

    def fact_offset(self) -> int:
        raw = self._db.get(_FACT_OFFSET)
        return 0 if raw is None else int(bytes(raw))

    def checkpoint(self, fact_offset: int | None = None) -> None:
        """Write state changes, dedupe marks and offsets in one atomic write batch."""
        wb = WriteBatch(raw_mode=True)
        for key, value in self._dirty.items():
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        for topic, offset in self._offsets.items():
            wb.put(_META + b"in:" + topic.encode(), str(offset).encode())
        if fact_offset is not None or self.fresh:
            current = self.fact_offset()
            wb.put(_FACT_OFFSET, str(max(current, fact_offset or 0)).encode())
        self._db.write(wb)
        self._dirty.clear()
        self._offsets.clear()
        self.fresh = False

    def rollback(self) -> None:
        self._dirty.clear()
        self._offsets.clear()

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """State and dedupe entries (not offsets): what a fingerprint covers."""
        yield from self._scan(_STATE)
        yield from self._scan(_SEEN)

    def close(self) -> None:
        self._db.close()


def open_partition_store(
    state_dir: Path, processor: str, partition: int, *, wipe: bool = False
) -> PartitionStore:
    path = Path(state_dir) / processor / f"partition-{partition}"
    if wipe and path.exists():
        shutil.rmtree(path)
    return PartitionStore(path, partition)
