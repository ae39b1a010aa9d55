"""Consumer helpers, and reading a topic to its end.

"The end" is the high watermark of each partition when the read begins: a
read stops once every partition yielded the record before it, or reported
that it reached the end of the log (compaction, transaction markers and
retention can leave the offset before the watermark without a record).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from onceflow.schemas import CodecError, Event, EventCodec, SingleObjectCodec

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = [
    "TopicFollower",
    "assign_from_committed",
    "broker_away",
    "consumer_lag",
    "log_consume_error",
    "make_consumer",
    "partition_count",
    "positions_past",
    "read_events",
    "read_partition_to_end",
    "read_topic_to_end",
    "type_fingerprints",
    "watermarks",
]


def make_consumer(settings: StreamsSettings, group_id: str | None, **overrides: Any) -> Consumer:
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


def consumer_lag(consumer: Consumer) -> dict[tuple[str, int], int]:
    """Records behind the high watermark, per assigned partition, from the consumer's own
    position and the watermarks its last fetches brought (no request to the broker).
    Partitions it knows neither for yet are left out."""
    assigned = consumer.assignment()
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.position(assigned) if assigned else []:
        if tp.offset < 0:
            continue
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0:
            out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    return dict(sorted(out.items()))


def positions_past(consumer: Consumer, known: dict[tuple[str, int], int]
                   ) -> dict[tuple[str, int], int]:
    """The assigned partitions whose position went past `known` (the offset after the
    last record the caller read) without a record: over the commit marker that ends a
    transaction's records (every role writes in transactions), or records a transaction
    aborted. A reader that tracks its place by record offsets alone stays one short of
    a transactional topic's end for good; call this when a read returned nothing."""
    assigned = consumer.assignment()
    if not assigned:
        return {}
    return {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)
            if tp.offset >= 0 and tp.offset > known.get((tp.topic, tp.partition), -1)}


def partition_count(consumer: Consumer, topic: str, timeout: float = 10.0) -> int:
    md = consumer.list_topics(topic, timeout=timeout)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise RuntimeError(f"topic {topic!r} does not exist; run `onceflow topics create` first")
    return len(meta.partitions)


#: what a partition answers for a moment after its topic was created or its broker restarted
_NOT_READY = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                        KafkaError._UNKNOWN_TOPIC})


#: what a client says while the brokers do not answer (restarting, cut off)
_AWAY = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                   KafkaError._TIMED_OUT, KafkaError._RESOLVE, KafkaError._WAIT_COORD,
                   KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
                   KafkaError.COORDINATOR_LOAD_IN_PROGRESS})


def broker_away(exc: KafkaException) -> bool:
    """Whether a failed call failed because the brokers are away for now (worth joining
    again once they answer), not because of anything the caller asked wrongly."""
    err = exc.args[0]
    return bool(err.retriable()) or err.code() in _AWAY or err.code() in _NOT_READY


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 30.0
               ) -> tuple[int, int]:
    """A partition's low and high watermark, asked of its leader (not a cached value),
    waiting out the moment a new or restarted partition has no leader yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            retriable = err.code() in _NOT_READY or err.retriable()
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def assign_from_committed(consumer: Consumer, partitions: list[TopicPartition],
                          default: int = OFFSET_BEGINNING, timeout: float = 60.0) -> None:
    """Assign `partitions` from the group's committed offsets (`default` where none),
    asked here and retried while the group coordinator is still loading.

    A bare `assign()` leaves that question to librdkafka, which on a broker
    whose offsets topic is still loading can leave a partition without a
    position, fetching nothing, for good.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            committed = consumer.committed(partitions, timeout=10)
            break
        except KafkaException:
            # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, a timeout: all pass
            # once the offsets topic is loaded; anything else still fails at the deadline.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    consumer.assign([TopicPartition(tp.topic, tp.partition,
                                    tp.offset if tp.offset >= 0 else default)
                     for tp in committed])


def _watermarks(consumer: Consumer, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    return {(t, p): watermarks(consumer, t, p)[1] for t, p in tps}


def read_partition_to_end(
    settings: StreamsSettings,
    topic: str,
    partition: int,
    start_offset: int = 0,
    *,
    timeout_s: float = 600.0,
) -> Iterator[Message]:
    """Every record of one partition from `start_offset` to the end (see module doc)."""
    yield from read_topic_to_end(
        settings, topic, partitions=[partition], start_offsets={partition: start_offset},
        timeout_s=timeout_s,
    )


def read_topic_to_end(
    settings: StreamsSettings,
    topic: str,
    *,
    partitions: list[int] | None = None,
    start_offsets: dict[int, int] | None = None,
    timeout_s: float = 600.0,
    follow: bool = False,
) -> Iterator[Message]:
    """Every record of a topic (or some partitions) from the given offsets to the end;
    with `follow`, then every record that arrives, until the caller stops. Records
    without a value (tombstones) are not events and are left out."""
    follower = TopicFollower(settings, [topic], partitions=partitions,
                             start_offsets=start_offsets)
    try:
        yield from follower.read_to_end(timeout_s, strict=True)
        while follow:
            yield from follower.read(timeout=0.5)
    finally:
        follower.close()


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

    def __init__(self, settings: StreamsSettings, topics: list[str], *,
                 partitions: list[int] | None = None,
                 start_offsets: dict[int, int] | None = None) -> None:
        """`partitions` and `start_offsets` (by partition) narrow a one-topic read."""
        self._consumer = make_consumer(settings, None, **{"enable.partition.eof": True,
                                                          **settings.background_consumer()})
        starts = start_offsets or {}
        self._partitions = [(t, p) for t in topics for p in (
            partitions if partitions is not None
            else range(partition_count(self._consumer, t)))]
        self._consumer.assign([TopicPartition(t, p, starts.get(p, 0) or OFFSET_BEGINNING)
                               for t, p in self._partitions])
        #: per partition, the offset after the last record read (or the end of log seen)
        self._next: dict[tuple[str, int], int] = {(t, p): starts.get(p, 0)
                                                  for t, p in self._partitions}

    def caught_up(self, targets: dict[tuple[str, int], int] | None = None) -> bool:
        """Whether every partition was read up to `targets` (its high watermark now)."""
        targets = targets or _watermarks(self._consumer, self._partitions)
        return all(self._next.get(tp, 0) >= high for tp, high in targets.items())

    def read_to_end(self, timeout_s: float = 600.0, *, strict: bool = False
                    ) -> Iterator[Message]:
        """What the topics hold up to their high watermarks as of the call (records
        with a value); a topic written all the time still ends. `strict`: a consume
        error other than the end of a partition raises instead of being skipped."""
        targets = _watermarks(self._consumer, self._partitions)
        deadline = time.monotonic() + timeout_s
        while not self.caught_up(targets):
            yield from self.read(timeout=0.1, strict=strict)
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading to the end of {self._partitions} took too long")

    def read(self, timeout: float = 0.2, max_records: int = 100_000, *,
             strict: bool = False) -> Iterator[Message]:
        """What has arrived (waiting up to `timeout` when nothing has), up to `max_records`.

        Only records with a value: tombstones and consume errors are left out (with
        `strict`, an error other than a partition's end raises).
        """
        n = 0
        while n < max_records:
            msgs = self._consumer.consume(num_messages=5000, timeout=timeout if n == 0 else 0)
            if not msgs:
                return
            for msg in msgs:
                err = msg.error()
                tp = (str(msg.topic()), msg.partition() or 0)
                if err is None:
                    self._next[tp] = (msg.offset() or 0) + 1
                    if msg.value() is not None:
                        n += 1
                        yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    # The end of the log at the fetch: past any record that
                    # compaction, retention or a transaction marker left missing.
                    self._next[tp] = max(self._next.get(tp, 0), msg.offset() or 0)
                elif strict:
                    raise RuntimeError(f"reading {msg.topic()}[{msg.partition()}]: {err}")

    def close(self) -> None:
        self._consumer.close()


def read_events(
    settings: StreamsSettings,
    topic: str,
    codec: EventCodec,
    *,
    event_types: frozenset[str] | None = None,
) -> Iterator[tuple[Message, Event]]:
    """A topic's events from offset 0 to the end, decoded, in partition order.

    Tombstones (records without a value) are not events and are left
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
