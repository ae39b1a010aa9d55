"""Processor state: an in-memory store for tests and replays, RocksDB for processes."""

from onceflow.streams.state.memory import MemoryState
from onceflow.streams.state.rocksdb import (
    PartitionStore,
    open_partition_snapshot,
    open_partition_store,
)

__all__ = ["MemoryState", "PartitionStore", "open_partition_snapshot", "open_partition_store"]
