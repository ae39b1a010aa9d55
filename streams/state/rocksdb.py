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

from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, ReadOptions, WriteBatch

from onceflow.streams.state import serde
from onceflow.streams.state.generations import MarkGenerations
from onceflow.streams.state.serde import key_successor, seen_key

__all__ = [
    "PartitionStore",
    "StoreSnapshot",
    "open_partition_snapshot",
    "open_partition_store",
    "partition_store_path",
    "seen_key",
]

_STATE = b"s\x00"
_SEEN = b"d\x00"
_META = b"m\x00"
_FACT_OFFSET = _META + b"fact-offset"
_CLOCK = _META + b"clock"
_FORMAT = _META + b"format"
_DELETED = None
_SEEN_MARK = object()  # a dedupe mark pending in `_dirty` (stored as b"1")
_BUCKET = 6  # namespace (2 bytes) + 4 bytes of the key


def _format(horizon_ms: int, min_marks: int, layout: str = "") -> bytes:
    """What a store's layout depends on: dedupe marks are filed by generation, so a
    store kept with another rule (or before generations) is rebuilt from the fact
    topic rather than misread; and the reducer's own state layout (`layout`), so a
    release that changes it rebuilds the state from its facts."""
    return f"2:{horizon_ms}:{min_marks}{f':{layout}' if layout else ''}".encode()


class _Pending:
    """A value set since the last checkpoint, told apart from stored bytes in a scan."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _encode(value: Any) -> bytes:
    """A pending value as stored: a dedupe mark as b"1", state as canonical JSON."""
    return b"1" if value is _SEEN_MARK else serde.dumps(value)


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    # Most lookups miss: every input's dedupe check (`has_seen`), and the state of
    # an entity seen for the first time. Bloom filters, over the memtable and over
    # each table file (10 bits a key, Kafka Streams' choice too), answer a miss
    # without searching either.
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    opts.set_memtable_prefix_bloom_ratio(0.1)
    opts.set_memtable_whole_key_filtering(True)
    return opts


class PartitionStore:
    """The `State` a reducer sees, plus the dedupe set and offsets the shell keeps."""

    def __init__(self, path: Path, partition: int, *, secondary: Path | None = None,
                 horizon_ms: int = 0, min_marks: int = 0, layout: str = "") -> None:
        """`secondary`: open a read-only follower of a store another process may hold
        open (RocksDB's secondary instance, its own files under that directory).

        `horizon_ms`, `min_marks`: dedupe marks are kept for at least this much
        logged time and this many later marks (`streams.state.generations`); a
        whole generation is dropped at once, by one range delete. 0: for ever.
        """
        self.path = path
        self.partition = partition
        self.horizon_ms = horizon_ms
        self.min_marks = min_marks
        self.layout = layout
        if secondary is None:
            path.mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(path), options=_options())
        else:
            self._db = Rdict(str(path), options=Options(raw_mode=True),
                             access_type=AccessType.secondary(str(secondary)))
        # Changes since the last checkpoint, as Python values (None: deleted):
        # a value set and read again within a batch is never re-parsed, and a
        # key set many times is serialised once, at the checkpoint.
        self._dirty: dict[bytes, Any] = {}
        # Dirty keys by their first bytes, so a prefix scan (a tick looking
        # for due leases) does not walk every key changed in the batch.
        self._buckets: dict[bytes, set[bytes]] = {}
        self._offsets: dict[str, int] = {}
        self.fresh = self._db.get(_FACT_OFFSET) is None
        raw_format = self._db.get(_FORMAT)
        #: written by an older layout or with another horizon: rebuild it from the facts
        self.outdated = not self.fresh and (
            raw_format is None or bytes(raw_format) != _format(horizon_ms, min_marks, layout))
        self.marks = self._load_marks()
        #: generations below this are dropped at the next checkpoint
        self._drop_below: int | None = None

    # -- State protocol ------------------------------------------------------------

    def _has(self, key: bytes) -> bool:
        if key in self._dirty:
            return self._dirty[key] is not None
        return self._db.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        k = _STATE + key.encode()
        if k in self._dirty:
            value = self._dirty[k]
            return default if value is None else value
        raw = self._db.get(k)
        return default if raw is None else serde.loads(bytes(raw))

    def _mark(self, key: bytes, value: Any) -> None:
        if key not in self._dirty:
            bucket = self._buckets.get(key[:_BUCKET])
            if bucket is None:
                self._buckets[key[:_BUCKET]] = {key}
            else:
                bucket.add(key)
        self._dirty[key] = value

    def set(self, key: str, value: Any) -> None:
        self._mark(_STATE + key.encode(), value)

    def delete(self, key: str) -> None:
        self._mark(_STATE + key.encode(), _DELETED)

    def __contains__(self, key: str) -> bool:
        return self._has(_STATE + key.encode())

    def _scan(self, prefix: bytes, stop: bytes | None = None, start: bytes | None = None
              ) -> Iterator[tuple[bytes, Any]]:
        """Keys in byte order with their values: stored ones as bytes, pending ones as objects."""
        merged: dict[bytes, Any] = {}
        # An upper bound stops RocksDB at the end of the range. Without it, an
        # iterator that finds no live key below `stop` walks every tombstone up
        # to the next live key, which after a burst of completed leases is
        # thousands of them on every tick.
        read_opts = ReadOptions()
        bound = stop if stop is not None else key_successor(prefix)
        if bound is not None:
            read_opts.set_iterate_upper_bound(bound)
        it = self._db.iter(read_opts)
        it.seek(start if start is not None and start > prefix else prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix) or (stop is not None and key >= stop):
                break
            merged[key] = bytes(it.value())
            it.next()
        candidates = (self._buckets.get(prefix[:_BUCKET], ())
                      if len(prefix) >= _BUCKET and prefix.startswith(_STATE)
                      else self._dirty.keys())  # (dedupe marks are not bucketed)
        for key in candidates:
            if (key.startswith(prefix) and (stop is None or key < stop)
                    and (start is None or key >= start)):
                value = self._dirty[key]
                merged[key] = _Pending(value) if value is not None else None
        for key in sorted(merged):
            value = merged[key]
            if value is not None:
                yield key, value

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, Any]]:
        end = None if stop is None else _STATE + stop.encode()
        begin = None if start is None else _STATE + start.encode()
        for key, value in self._scan(_STATE + prefix.encode(), end, begin):
            obj = value.value if isinstance(value, _Pending) else serde.loads(value)
            yield key[len(_STATE):].decode(), obj

    # -- what the shell keeps ------------------------------------------------------------

    def _load_marks(self) -> MarkGenerations:
        raw = self._db.get(_CLOCK)
        return MarkGenerations.from_state(None if raw is None else bytes(raw).decode(),
                                          self.horizon_ms, self.min_marks)

    @property
    def clock(self) -> int:
        """The newest logged time among the facts this partition decided."""
        return self.marks.clock

    def has_seen(self, event_id: str) -> bool:
        """Whether an input was decided recently: its mark is in this generation or the
        one before (older ones are dropped)."""
        gen = self.marks.generation
        return self._has(seen_key(gen, event_id)) or (
            gen > 0 and self._has(seen_key(gen - 1, event_id)))

    def mark_seen(self, event_id: str, at: int = 0) -> None:
        """Mark an input decided; `at` is the newest logged time of the facts it caused,
        which moves the partition's clock (and may start a new generation)."""
        drop_below = self.marks.mark(at)
        if drop_below is not None and drop_below > 0:
            self._drop_below = drop_below
            floor = seen_key(drop_below, "")
            for key in [k for k in self._dirty if k.startswith(_SEEN) and k < floor]:
                del self._dirty[key]
        # Not bucketed: buckets serve prefix scans of state keys (`items`), and no scan
        # of dedupe marks is narrower than the whole namespace.
        self._dirty[seen_key(self.marks.generation, event_id)] = _SEEN_MARK

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
        put = wb.put
        for key, value in self._dirty.items():
            if value is None:
                wb.delete(key)
            else:
                put(key, _encode(value))
        for topic, offset in self._offsets.items():
            wb.put(_META + b"in:" + topic.encode(), str(offset).encode())
        if self._drop_below is not None and self._drop_below > 0:
            wb.delete_range(_SEEN, seen_key(self._drop_below, ""))
        wb.put(_CLOCK, self.marks.to_state().encode())
        if self.fresh:
            wb.put(_FORMAT, _format(self.horizon_ms, self.min_marks, self.layout))
        if fact_offset is not None or self.fresh:
            current = self.fact_offset()
            wb.put(_FACT_OFFSET, str(max(current, fact_offset or 0)).encode())
        self._db.write(wb)
        self._dirty.clear()
        self._buckets.clear()
        self._offsets.clear()
        self._drop_below = None
        self.fresh = False

    def has_changes(self) -> bool:
        """State, dedupe marks or input offsets not yet checkpointed."""
        return bool(self._dirty or self._offsets or self._drop_below is not None)

    def rollback(self) -> None:
        self._dirty.clear()
        self._buckets.clear()
        self._offsets.clear()
        self._drop_below = None
        self.marks = self._load_marks()

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """State and dedupe entries (not offsets): what a fingerprint covers."""
        for prefix in (_STATE, _SEEN):
            for key, value in self._scan(prefix):
                yield key, _encode(value.value) if isinstance(value, _Pending) else value

    def snapshot(self) -> StoreSnapshot:
        """The state as of the last checkpoint, read-only and unchanging: safe to read from
        another thread while this store takes the next batch (a query server's view)."""
        return StoreSnapshot(self._db)

    def close(self) -> None:
        self._db.close()


class StoreSnapshot:
    """A `State` to read (never write) as one checkpoint left it: every get and scan of
    one snapshot sees the same write batches, whatever is checkpointed meanwhile."""

    def __init__(self, db: Rdict) -> None:
        self._snapshot = db.snapshot()

    def _iter(self, start: bytes, bound: bytes | None) -> Any:
        read_opts = ReadOptions()
        if bound is not None:
            read_opts.set_iterate_upper_bound(bound)
        it = self._snapshot.iter(read_opts)
        it.seek(start)
        return it

    def get(self, key: str, default: Any = None) -> Any:
        k = _STATE + key.encode()
        it = self._iter(k, k + b"\x00")
        return serde.loads(bytes(it.value())) if it.valid() else default

    def __contains__(self, key: str) -> bool:
        k = _STATE + key.encode()
        return self._iter(k, k + b"\x00").valid()

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, Any]]:
        first = _STATE + prefix.encode()
        bound = _STATE + stop.encode() if stop is not None else key_successor(first)
        begin = _STATE + start.encode() if start is not None else first
        it = self._iter(max(first, begin), bound)
        while it.valid():
            yield bytes(it.key())[len(_STATE):].decode(), serde.loads(bytes(it.value()))
            it.next()

    def items_reversed(self, prefix: str, stop: str) -> Iterator[tuple[str, Any]]:
        """Keys starting with `prefix` and below `stop`, newest (highest) first."""
        first = _STATE + prefix.encode()
        # (no lower bound: rocksdict's seek_for_prev lands below it when one is set)
        it = self._snapshot.iter(ReadOptions())
        it.seek_for_prev(_STATE + stop.encode())
        end = _STATE + stop.encode()
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(first):
                break
            if key < end:
                yield key[len(_STATE):].decode(), serde.loads(bytes(it.value()))
            it.prev()

    def set(self, key: str, value: Any) -> None:
        raise TypeError("a snapshot is read-only")

    def delete(self, key: str) -> None:
        raise TypeError("a snapshot is read-only")


def partition_store_path(state_dir: Path, processor: str, partition: int) -> Path:
    return Path(state_dir) / processor / f"partition-{partition}"


def open_partition_store(
    state_dir: Path, processor: str, partition: int, *, wipe: bool = False,
    horizon_ms: int = 0, min_marks: int = 0, layout: str = "",
) -> PartitionStore:
    """Open a partition's state (`wipe`: empty). A store kept in an older layout, or with
    another rule for its dedupe marks, says so (`outdated`): the shell then wipes it and
    rebuilds it from the fact topic."""
    path = partition_store_path(state_dir, processor, partition)
    if wipe and path.exists():
        shutil.rmtree(path)
    return PartitionStore(path, partition, horizon_ms=horizon_ms, min_marks=min_marks,
                          layout=layout)


def open_partition_snapshot(
    state_dir: Path, processor: str, partition: int, scratch: Path
) -> PartitionStore | None:
    """A read-only view of a partition's last checkpoint, safe while its processor runs.

    None when the processor has no state for that partition here.
    """
    path = partition_store_path(state_dir, processor, partition)
    if not (path / "CURRENT").exists():
        return None
    return PartitionStore(path, partition, secondary=scratch)
