"""Consumer helpers, and reading a topic to its end on a broker with a wrong watermark.

The embedded broker reports a high watermark that can lag right after a
multi-record batch, so "the end" is: past the watermark *and* quiet for an
idle window. The window is a setting; on a real cluster it only costs its
length once per read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from schemas import CodecError, Event, EventCodec, SingleObjectCodec
from streams.settings import OnceflowSettings

__all__ = [
    "TopicFollower",
    "log_consume_error",
    "make_consumer",
    "partition_count",
    "read_events",
    "read_partition_to_end",
    "read_topic_to_end",
    "type_fingerprints",
]


def make_consumer(settings: OnceflowSettings, group_id: str | None, **overrides: Any) -> Consumer:
    return Consumer(settings.consumer_config(group_id, **overrides))


def log_consume_error(msg: Message, log: Any) -> None:
    """Log the error a consumed `msg` carries instead of a record, unless it only says
    a partition's end was reached.

    Callers test `msg.error() is not None` themselves: they run it once per
    record, where a call for every record would cost more than the test.
    """
    err = msg.error()
    if err is not None and err.code() != KafkaError._PARTITION_EOF:
        log.warning("consume.error", error=str(err))


def partition_count(consumer: Consumer, topic: str, timeout: float = 10.0) -> int:
    md = consumer.list_topics(topic, timeout=timeout)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise RuntimeError(f"topic {topic!r} does not exist; run `onceflow topics create` first")
    return len(meta.partitions)


def _read_assigned(
    consumer: Consumer,
    targets: dict[tuple[str, int], int],
    idle_s: float,
    deadline: float,
    batch: int = 5000,
    starts: dict[tuple[str, int], int] | None = None,
) -> Iterator[Message]:
    """Yield records until every partition is at its end.

    A partition is at its end once its position passed the high watermark
    seen at the start and either nothing arrived for `idle_s` (the watermark
    can be short, see BROKER.md) or it already yielded a record written after
    the read began (a topic written to all the time, like one carrying clock
    ticks, is never idle). A partition read from an offset at its end yields
    nothing and has no position yet: its position is then where it started.
    """
    starts = starts or {}
    started_ms = int(time.time() * 1000)
    began = time.monotonic()
    last_record: dict[tuple[str, int], float] = {}
    fresh: set[tuple[str, int]] = set()
    while True:
        msgs = consumer.consume(num_messages=batch, timeout=min(0.1, idle_s))
        now = time.monotonic()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"reading {msg.topic()}[{msg.partition()}]: {err}")
            tp_key = (str(msg.topic()), msg.partition() or 0)
            last_record[tp_key] = now
            if msg.timestamp()[1] >= started_ms:
                fresh.add(tp_key)
            yield msg
        positions = consumer.position([TopicPartition(t, p) for (t, p) in targets])
        if all(
            (targets[(tp.topic, tp.partition)] <= 0
             or (tp.offset if tp.offset >= 0 else starts.get((tp.topic, tp.partition), 0))
             >= targets[(tp.topic, tp.partition)])
            and ((tp.topic, tp.partition) in fresh
                 or now - last_record.get((tp.topic, tp.partition), began) >= idle_s)
            for tp in positions
        ):
            return
        if now > deadline:
            raise TimeoutError(f"reading to the end of {sorted(targets)} took too long")


def read_partition_to_end(
    settings: OnceflowSettings,
    topic: str,
    partition: int,
    start_offset: int = 0,
    *,
    idle_ms: int | None = None,
    timeout_s: float = 600.0,
) -> Iterator[Message]:
    """Every record of one partition from `start_offset` to the end (see module doc)."""
    yield from read_topic_to_end(
        settings, topic, partitions=[partition], start_offsets={partition: start_offset},
        idle_ms=idle_ms, timeout_s=timeout_s,
    )


def read_topic_to_end(
    settings: OnceflowSettings,
    topic: str,
    *,
    partitions: list[int] | None = None,
    start_offsets: dict[int, int] | None = None,
    idle_ms: int | None = None,
    timeout_s: float = 600.0,
) -> Iterator[Message]:
    """Every record of a topic (or some partitions) from the given offsets to the end."""
    consumer = make_consumer(settings, None, **{"enable.partition.eof": False,
                                                **settings.background_consumer()})
    try:
        if partitions is None:
            partitions = list(range(partition_count(consumer, topic)))
        start_offsets = start_offsets or {}
        assignment = [
            TopicPartition(topic, p, start_offsets.get(p, 0) or OFFSET_BEGINNING)
            for p in partitions
        ]
        consumer.assign(assignment)
        targets: dict[tuple[str, int], int] = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            targets[(topic, p)] = high
        idle_s = (idle_ms if idle_ms is not None else settings.read_to_end_idle_ms) / 1000
        starts = {(topic, p): start_offsets.get(p, 0) for p in partitions}
        yield from _read_assigned(consumer, targets, idle_s, time.monotonic() + timeout_s,
                                  starts=starts)
    finally:
        consumer.close()


def type_fingerprints(codec: EventCodec, event_types: frozenset[str]) -> frozenset[bytes] | None:
    """The Avro fingerprints of `event_types` (what `raw[2:10]` holds in single-object
    encoding), to skip other records undecoded; None when the codec has no such header."""
    if not isinstance(codec, SingleObjectCodec):
        return None
    return frozenset(fp for fp, entry in codec.registry.by_fingerprint.items()
                     if entry.event_type in event_types)


class TopicFollower:
    """Every partition of some topics from the start, then whatever arrives.

    For readers off the hot path (progress and billing views, the fleet), so
    it asks the broker with the background fetch wait.
    """

    def __init__(self, settings: OnceflowSettings, topics: list[str]) -> None:
        self._consumer = make_consumer(settings, None, **{"enable.partition.eof": False,
                                                          **settings.background_consumer()})
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                               for p in range(partition_count(self._consumer, t))])

    def read(self, timeout: float = 0.2, max_records: int = 100_000) -> Iterator[Message]:
        """What has arrived (waiting up to `timeout` when nothing has), up to `max_records`.

        Only records with a value: recovery markers and consume errors are left out.
        """
        n = 0
        while n < max_records:
            msgs = self._consumer.consume(num_messages=5000, timeout=timeout if n == 0 else 0)
            if not msgs:
                return
            for msg in msgs:
                if msg.error() is None and msg.value() is not None:
                    n += 1
                    yield msg

    def close(self) -> None:
        self._consumer.close()


def read_events(
    settings: OnceflowSettings,
    topic: str,
    codec: EventCodec,
    *,
    event_types: frozenset[str] | None = None,
) -> Iterator[tuple[Message, Event]]:
    """A topic's events from offset 0 to the end, decoded, in partition order.

    Recovery markers (records without a value) are not events and are left
    out; so are records that do not decode (a processor has dead-lettered
    them already). `event_types` skips other types before decoding them.
    """
    wanted = None if event_types is None else type_fingerprints(codec, event_types)
    for msg in read_topic_to_end(settings, topic):
        raw = msg.value()
        if raw is None or (wanted is not None and raw[2:10] not in wanted):
            continue
        try:
            event = codec.decode(raw)
        except CodecError:
            continue
        if event_types is None or event.event_type in event_types:
            yield msg, event
