"""Checking live state against a replay of the log: `onceflow replay ROLE --verify`.

A processor's checkpoint stores its state together with the fact offset it
reflects, so folding the fact topic from 0 up to that offset must give the
same bytes. The check reads the live RocksDB through a read-only secondary
instance, so the processor can keep running while it is verified.

Where a role runs as several members, each keeps its partitions' state in
its own directory (`state_dir/members/<name>`), and a partition may have a
copy in more than one: the member that owns it now, and ones that owned it
before and gave it up cleanly. Every copy is checked, each at its own fact
offset: a copy a member kept must be a true prefix of the log too.
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
    #: whose copy this is: the member's name ("" for the state directory itself)
    member: str = ""

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
                whose = f" ({p.member}'s copy)" if p.member else ""
                return f"partition {p.partition}{whose}: {p.first_difference}"
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
    roots = settings.member_state_roots(state_dir)
    # Each copy of each partition: (member, partition, fact offset, its entries).
    copies: list[tuple[str, int, int, dict[bytes, bytes]]] = []
    with tempfile.TemporaryDirectory(prefix="onceflow-verify-") as scratch:
        for i, (member, root) in enumerate(roots):
            for p in partitions:
                store = open_partition_snapshot(root, reducer.name, p,
                                                Path(scratch) / f"{i}-{p}")
                if store is None:
                    continue
                try:
                    copies.append((member, p, store.fact_offset(), dict(store.raw_items())))
                finally:
                    store.close()
    check.missing_state = sorted(set(partitions) - {p for _, p, _, _ in copies})
    started = time.perf_counter()
    # One replay per round, a round holding at most one copy of each partition.
    rounds: list[dict[int, tuple[str, int, dict[bytes, bytes]]]] = []
    for member, p, until, items in copies:
        slot = next((r for r in rounds if p not in r), None)
        if slot is None:
            slot = {}
            rounds.append(slot)
        slot[p] = (member, until, items)
    for r in rounds:
        replayed = replay_facts(reducer, settings, fact_topic, codec, partitions=sorted(r),
                                until={p: until for p, (_, until, _) in r.items()})
        for p in sorted(r):
            member, until, live = r[p]
            items = dict(replayed[p].raw_items())
            live_fp, replay_fp = fingerprint_items(live.items()), fingerprint_items(items.items())
            check.partitions.append(PartitionCheck(
                p, until, live_fp, replay_fp, len(live),
                None if live_fp == replay_fp else _first_difference(live, items), member,
            ))
    check.seconds = time.perf_counter() - started
    check.partitions.sort(key=lambda c: (c.partition, c.member))
    return check
