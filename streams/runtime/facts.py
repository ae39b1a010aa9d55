"""Folding a processor's own fact topic: shared by recovery and replay.

A decision's facts carry two headers: the id of the input that caused them
and their position `i/n`. A decision counts only once all `n` facts are
folded; a trailing, incomplete group (the process died while producing it)
is held back, and a later fact at position `i` of the same cause replaces
positions `i..` of the held group. Recovery and replay apply the same rule,
so they reach the same state.

The shell ends a held group it cannot repeat with a `DecisionClosed` fact
at the next position (see `BatchedProcessor`): the group then completes with
the facts that were written. That fact is the shell's own: it is folded
here and never given to the reducer.

Two kinds of fact topic, two ways to know which inputs were decided:

- an *event* topic (keyed by `event_id`: the scheduler's, the ledger's) keeps
  every decision through compaction, which only collapses a redelivered copy
  of the same fact; its causes are remembered as dedupe marks in the state;
- a *table* topic (keyed by its entity: trust by node, wallets by wallet)
  keeps only the latest fact per key once the cleaner has run, so marks
  folded from it would depend on what compaction removed. Its facts carry
  instead the input position they were decided at (`onceflow.inputs`: the
  next offset of each input, in the processor's input order). Positions only
  grow, the last fact of a partition is never compacted away, and the state
  (the latest value per key) is the same before and after compaction: so is
  the recovered state, with no marks, and its fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from confluent_kafka import Message

from onceflow.schemas import CodecError, DecisionClosed, Event, EventCodec
from onceflow.streams.state import MemoryState
from onceflow.streams.types import Reducer, State

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = [
    "FACT_HEADER_CAUSE",
    "FACT_HEADER_INPUTS",
    "FACT_HEADER_MEMBER",
    "FACT_HEADER_SEQ",
    "FactGroups",
    "FactRecord",
    "dedupes_by_position",
    "fact_headers",
    "fact_record",
    "fold_fact_records",
    "replay_facts",
]

FACT_HEADER_CAUSE = "onceflow.cause"
FACT_HEADER_SEQ = "onceflow.seq"
FACT_HEADER_INPUTS = "onceflow.inputs"
#: the member that wrote the fact (which member decided what, after partitions moved)
FACT_HEADER_MEMBER = "onceflow.member"


def dedupes_by_position(settings: StreamsSettings, fact_topic: str) -> bool:
    """Whether a fact topic is a table topic (compacted by entity): its processor
    knows what it decided by input position, not by dedupe marks (module doc)."""
    from onceflow.streams.topics.catalog import TopicCatalog

    topic = TopicCatalog(settings).by_name(fact_topic)
    return topic is not None and topic.key != "event_id"


#: "seq/total" of the small groups almost every decision makes, formatted once
_SEQS = {(seq, total): f"{seq}/{total}".encode() for total in range(1, 9)
         for seq in range(1, total + 1)}


def fact_headers(cause: str, seq: int, total: int) -> list[tuple[str, bytes]]:
    encoded = _SEQS.get((seq, total)) or f"{seq}/{total}".encode()
    return [(FACT_HEADER_CAUSE, cause.encode()), (FACT_HEADER_SEQ, encoded)]


@dataclass(frozen=True)
class FactRecord:
    cause: str
    seq: int
    total: int
    fact: Event
    raw: bytes
    offset: int
    #: the next offset of each input when the fact was decided (table topics only)
    inputs: tuple[int, ...] | None = None


def fact_record(msg: Message, codec: EventCodec) -> FactRecord | None:
    from onceflow.streams.kafka.dead_letters import message_headers

    headers = dict(message_headers(msg))
    cause = headers.get(FACT_HEADER_CAUSE)
    seq = headers.get(FACT_HEADER_SEQ)
    raw = msg.value()
    if cause is None or seq is None or raw is None:
        return None
    i, n = (int(x) for x in seq.decode().split("/"))
    try:
        fact = codec.decode(raw)
    except CodecError:
        return None
    positions = headers.get(FACT_HEADER_INPUTS)
    inputs = tuple(int(x) for x in positions.decode().split(",")) if positions else None
    return FactRecord(cause.decode(), i, n, fact, raw, msg.offset() or 0, inputs)


class FoldTarget(State, Protocol):
    """A state that also keeps the shell's dedupe marks (memory or RocksDB)."""

    def mark_seen(self, event_id: str, at: int = 0) -> None: ...


@dataclass
class FactGroups:
    pending: dict[str, list[FactRecord]] = field(default_factory=dict)

    def add(self, record: FactRecord) -> list[FactRecord] | None:
        """Add one fact; return the whole group when this fact completes it."""
        group = [*self.pending.get(record.cause, [])[: record.seq - 1], record]
        if record.seq >= record.total:
            self.pending.pop(record.cause, None)
            return group
        self.pending[record.cause] = group
        return None




def fold_fact_records(
    reducer: Reducer, state: FoldTarget, records: Iterable[FactRecord], groups: FactGroups,
    *, mark_seen: bool = True,
) -> Iterator[FactRecord]:
    """Evolve `state` with every complete group; yield the facts folded.

    `mark_seen=False` for a table topic's facts, which dedupe by position."""
    for record in records:
        done = groups.add(record)
        if done is None:
            continue
        at = 0
        for item in done:
            if isinstance(item.fact, DecisionClosed):
                continue
            reducer.evolve(state, item.fact)
            at = max(at, item.fact.occurred_at)
            yield item
        if mark_seen:
            # the newest time among the decision's facts, as the live shell marks it
            state.mark_seen(record.cause, at)


def replay_facts(
    reducer: Reducer,
    settings: StreamsSettings,
    fact_topic: str,
    codec: EventCodec,
    *,
    partitions: list[int] | None = None,
    until: dict[int, int] | None = None,
    horizon_ms: int | None = None,
) -> dict[int, MemoryState]:
    """Rebuild a processor's state from its fact topic, from offset 0, into scratch state.

    `until`: per partition, the offset to stop before (a checkpoint's fact
    offset), so a replay can be compared with the state of that checkpoint.
    `horizon_ms`: how long dedupe marks are kept (default: the settings'
    retention horizon, as the batched shell keeps them; 0 for the faust shell's).
    """
    from onceflow.streams.kafka.consumer import make_consumer, partition_count, read_topic_to_end

    if partitions is None:
        consumer = make_consumer(settings, None)
        try:
            partitions = list(range(partition_count(consumer, fact_topic)))
        finally:
            consumer.close()
    horizon = settings.retention_horizon_ms if horizon_ms is None else horizon_ms
    states = {p: MemoryState(horizon_ms=horizon, min_marks=settings.dedupe_min_marks)
              for p in partitions}
    if not partitions:
        return states
    groups = {p: FactGroups() for p in partitions}
    mark = not dedupes_by_position(settings, fact_topic)
    ends = until or {}
    # One read of every partition at once: the end of the topic is waited
    # for once, not once per partition.
    for msg in read_topic_to_end(settings, fact_topic, partitions=partitions):
        p = msg.partition() or 0
        end = ends.get(p)
        if end is not None and (msg.offset() or 0) >= end:
            continue
        record = fact_record(msg, codec)
        if record is not None:
            for _ in fold_fact_records(reducer, states[p], (record,), groups[p],
                                       mark_seen=mark):
                pass
    return states
