"""Checking live state against a replay of the log: `onceflow replay ROLE --verify`.

A processor's checkpoint stores its state together with the fact offset it
reflects, so folding the fact topic from 0 up to that offset must give the
same bytes. The check reads the live RocksDB through a read-only secondary
instance, so the processor can keep running while it is verified.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.schemas import EventCodec, SingleObjectCodec
from onceflow.streams.kafka.consumer import make_consumer, partition_count
from onceflow.streams.runtime.facts import replay_facts
from onceflow.streams.runtime.fingerprint import fingerprint_items
from onceflow.streams.state.rocksdb import open_partition_snapshot
from onceflow.streams.types import Reducer

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["PartitionCheck", "ReplayCheck", "verify_replay"]


@dataclass(frozen=True)
class PartitionCheck:
    partition: int
    fact_offset: int
    live: str
    replayed: str
    keys: int
    first_difference: str | None = None

    @property
    def equal(self) -> bool:
        return self.live == self.replayed


@dataclass
class ReplayCheck:
    processor: str
    fact_topic: str
    partitions: list[PartitionCheck] = field(default_factory=list)
    missing_state: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return bool(self.partitions) and all(p.equal for p in self.partitions)

    def first_difference(self) -> str | None:
        for p in self.partitions:
            if not p.equal:
                return f"partition {p.partition}: {p.first_difference}"
        return None


def _first_difference(live: dict[bytes, bytes], replayed: dict[bytes, bytes]) -> str:
    for key in sorted(set(live) | set(replayed)):
        a, b = live.get(key), replayed.get(key)
        if a != b:
            name = key.decode(errors="replace").replace("\x00", ":", 1)
            if a is None:
                return f"{name} only in the replay"
            if b is None:
                return f"{name} only in the live state"
            return f"{name} differs: live {a[:120]!r}, replay {b[:120]!r}"
    return "no difference found"


def verify_replay(
    reducer: Reducer,
    settings: StreamsSettings,
    fact_topic: str,
    *,
    codec: EventCodec | None = None,
    state_dir: Path | None = None,
) -> ReplayCheck:
    """Fold `fact_topic` from 0 to each live checkpoint and compare, partition by partition."""
    codec = codec or SingleObjectCodec()
    state_dir = Path(state_dir or settings.state_dir)
    check = ReplayCheck(reducer.name, fact_topic)
    consumer = make_consumer(settings, None)
    try:
        partitions = list(range(partition_count(consumer, fact_topic)))
    finally:
        consumer.close()
    live: dict[int, dict[bytes, bytes]] = {}
    until: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="onceflow-verify-") as scratch:
        for p in partitions:
            store = open_partition_snapshot(state_dir, reducer.name, p, Path(scratch) / str(p))
            if store is None:
                check.missing_state.append(p)
                continue
            try:
                until[p] = store.fact_offset()
                live[p] = dict(store.raw_items())
            finally:
                store.close()
    started = time.perf_counter()
    replayed = replay_facts(reducer, settings, fact_topic, codec, partitions=sorted(live),
                            until=until)
    check.seconds = time.perf_counter() - started
    for p in sorted(live):
        items = dict(replayed[p].raw_items())
        live_fp, replay_fp = fingerprint_items(live[p].items()), fingerprint_items(items.items())
        check.partitions.append(PartitionCheck(
            p, until[p], live_fp, replay_fp, len(live[p]),
            None if live_fp == replay_fp else _first_difference(live[p], items),
        ))
    return check
