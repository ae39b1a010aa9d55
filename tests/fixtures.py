"""Helpers shared by the test folders: polling with a deadline, event builders."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from onceflow.schemas import Event, SingleObjectCodec, WorkUnitSubmitted

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.2,
             what: str = "condition") -> T:
    """Poll until `condition()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = condition()
    return last


def submitted(i: int, *, tenant: str | None = None, unit: str | None = None) -> WorkUnitSubmitted:
    wu = unit or f"wu-{i}"
    return WorkUnitSubmitted(
        event_id=f"ev-{i}", occurred_at=1_700_000_000_000 + i, tenant_id=tenant or f"t{i % 4}",
        execution_session_id=f"sess:{wu}", work_unit_id=wu, simulated_ms=i % 7,
    )


def event_messages(settings: Any, topic: str) -> list[Any]:
    """A topic's records that carry an event: tombstones (no value) are left out."""
    from onceflow.streams.kafka import read_topic_to_end

    return [m for m in read_topic_to_end(settings, topic) if m.value() is not None]


def events(settings: Any, topic: str) -> list[Event]:
    """The decoded events of a topic, in partition order."""
    codec = SingleObjectCodec()
    return [codec.decode(m.value()) for m in event_messages(settings, topic)]


@contextmanager
def running(*processors: Any) -> Iterator[None]:
    """Processors (anything with `run(stop)`) in threads for the block, then stopped."""
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, kwargs={"stop": stop}, daemon=True)
               for p in processors]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def submit_units(settings: Any, units: list[WorkUnitSubmitted]) -> None:
    """Publish work units to the submissions topic and wait for every delivery."""
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.kafka import EventProducer
    from onceflow.streams.topics import TopicCatalog

    producer = EventProducer(settings, SingleObjectCodec())
    topic = TopicCatalog(settings)["submissions"]
    for u in units:
        producer.send(topic, u)
    producer.flush(60)


def live_fingerprint(state_dir: Any, processor: str, partitions: int) -> str:
    """The fingerprint of a stopped processor's RocksDB state, all partitions: kept in
    `state_dir` itself (a role run in this process) or in a member's directory beneath it
    (`members/<name>`, a role `start_roles` ran); where several members kept a copy of
    a partition, the latest (the highest fact offset) is the live one."""
    from pathlib import Path

    from onceflow.streams.runtime import fingerprint_partitions
    from onceflow.streams.settings import StreamsSettings
    from onceflow.streams.state import open_partition_store
    from onceflow.streams.state.rocksdb import partition_store_path

    roots = [r for _, r in StreamsSettings().member_state_roots(Path(state_dir))]
    items: dict[int, list[tuple[bytes, bytes]]] = {}
    for p in range(partitions):
        best: tuple[int, list[tuple[bytes, bytes]]] | None = None
        for r in roots:
            if not (partition_store_path(r, processor, p) / "CURRENT").exists():
                continue
            store = open_partition_store(r, processor, p)
            try:
                if best is None or store.fact_offset() > best[0]:
                    best = (store.fact_offset(), list(store.raw_items()))
            finally:
                store.close()
        items[p] = best[1] if best is not None else []
    return fingerprint_partitions(items)


def caught_up(settings: Any, group: str, topics: list[str]) -> bool:
    """Whether consumer group `group` has committed the end of every partition of `topics`
    (a role that has read, decided and checkpointed all its input so far)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.consumer_config(group))
    try:
        parts = [TopicPartition(t, p) for t in topics
                 for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
        committed = consumer.committed(parts, timeout=10)
        return all(c.offset == consumer.get_watermark_offsets(tp, timeout=10)[1]
                   for c, tp in zip(committed, parts, strict=True))
    finally:
        consumer.close()
