"""How a batch's outputs, state and input offsets become durable together.

Two parts, chosen once per processor by the `transactions` setting:

- `TransactionalCheckpoint` (exactly-once v2): one transactional producer per
  processor per member; every batch's facts, routed outputs, dead letters and
  ticks, and the input offsets (sent with the consumer's group metadata) are
  one Kafka transaction. Readers read committed, so a decision is visible
  whole or never, and a member the group moved on from cannot commit: its
  offsets carry a generation the coordinator refuses. The state is written
  after the commit, so it never reflects anything the log does not hold.
- `FlushCheckpoint` (at least once, with dedupe): outputs go out as decided;
  every `checkpoint_interval_ms` the producer is flushed, state and offsets
  are written, then the offsets committed. A crash can leave part of a
  decision in the log; recovery holds it (`FactGroups`) and dedupe marks
  stop a redelivered input from being decided twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import Consumer, Message, TopicPartition

from onceflow.schemas import EventCodec
from onceflow.streams.kafka.producer import EventProducer, TransactionFailed
from onceflow.streams.state.rocksdb import PartitionStore

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["Checkpoint", "Checkpointing", "FlushCheckpoint", "MemberFenced",
           "TransactionalCheckpoint", "checkpoint_for"]

#: "transactions": exactly-once v2; "flush": flush, then write state, then commit offsets
Checkpointing = Literal["transactions", "flush"]


class MemberFenced(RuntimeError):
    """The group moved on from this member, or its transaction could not commit: what it
    decided since its last commit is dropped and it joins the group again."""

    def __init__(self, reason: str, *, producer_dead: bool = True) -> None:
        super().__init__(reason)
        self.producer_dead = producer_dead


class Checkpoint:
    """The part of the shell that makes a batch durable; `producer` is what the shell
    sends every output through."""

    mode: Checkpointing
    #: a decision may be half in the log after a crash (recovery holds the written part)
    partial_decisions: bool
    #: facts after the last checkpoint may lack their routed outputs (recovery re-routes)
    reroutes_after_restart: bool
    producer: EventProducer

    #: the longest a part of a batch is decided before its checkpoint (None: a batch is
    #: decided whole)
    open_for_s: float | None = None

    def begin(self) -> None:
        """Before a batch's first output."""

    def due(self, since_last_s: float) -> bool:
        raise NotImplementedError

    def commit(self, consumer: Consumer, positions: Mapping[tuple[str, int], int],
               stores: Mapping[int, PartitionStore], fact_high: Mapping[int, int],
               *, wait: bool = False) -> None:
        raise NotImplementedError

    def start_offset(self, stored: int | None, committed: int | None) -> int | None:
        """Where an input partition is read from once assigned (None: the group's own)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop whatever was sent since the last commit (when it can be dropped)."""

    def close(self) -> None:
        self.producer.flush()


def _checkpoint_stores(stores: Mapping[int, PartitionStore], fact_high: Mapping[int, int]
                       ) -> None:
    for partition, store in stores.items():
        high = fact_high.get(partition)
        if store.has_changes() or high is not None:
            store.checkpoint(None if high is None else high + 1)


class TransactionalCheckpoint(Checkpoint):
    mode: Checkpointing = "transactions"
    partial_decisions = False
    reroutes_after_restart = False

    def __init__(self, settings: StreamsSettings, codec: EventCodec, transactional_id: str,
                 on_delivered: Callable[[Message], None]) -> None:
        self.producer = EventProducer(settings, codec, on_delivered=on_delivered,
                                      transactional_id=transactional_id)
        # As Kafka Streams' commit.interval.ms under exactly-once: a transaction stays
        # open this long at most while a batch is decided.
        self.open_for_s = settings.transaction_max_ms / 1000 or None

    def begin(self) -> None:
        try:
            self.producer.begin_transaction()
        except TransactionFailed as exc:
            raise MemberFenced(str(exc), producer_dead=exc.fenced) from exc

    def due(self, since_last_s: float) -> bool:
        # Every batch: nothing a batch decided is visible before its commit, so
        # waiting for company here would add the wait to every hop of a unit.
        return True

    def commit(self, consumer: Consumer, positions: Mapping[tuple[str, int], int],
               stores: Mapping[int, PartitionStore], fact_high: Mapping[int, int],
               *, wait: bool = False) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        if offsets:
            self.begin()  # offsets alone (a commit marker stepped over) need one too
        try:
            self.producer.commit_transaction(offsets, consumer.consumer_group_metadata())
        except TransactionFailed as exc:
            raise MemberFenced(str(exc), producer_dead=exc.fenced) from exc
        # After the commit: the state never holds what the log might not.
        _checkpoint_stores(stores, fact_high)

    def start_offset(self, stored: int | None, committed: int | None) -> int | None:
        # The group's offset was committed with the facts; the state, written after
        # the commit, may be a batch behind it (recovery folds that batch's facts).
        known = [o for o in (stored, committed) if o is not None and o >= 0]
        return max(known) if known else None

    def abort(self) -> None:
        self.producer.abort_transaction()

    def close(self) -> None:
        self.producer.abort_transaction()


class FlushCheckpoint(Checkpoint):
    mode: Checkpointing = "flush"
    partial_decisions = True
    reroutes_after_restart = True

    def __init__(self, settings: StreamsSettings, codec: EventCodec,
                 on_delivered: Callable[[Message], None]) -> None:
        # Facts go out as they are decided and the flush waits for the
        # checkpoint interval; a short linger still groups a batch's facts
        # into few record batches (see `processor_linger_ms`).
        linger: dict[str, Any] = {"linger.ms": settings.processor_linger_ms}
        self.producer = EventProducer(settings, codec, on_delivered=on_delivered, **linger)
        self.interval_s = settings.checkpoint_interval_ms / 1000

    def due(self, since_last_s: float) -> bool:
        return since_last_s >= self.interval_s

    def commit(self, consumer: Consumer, positions: Mapping[tuple[str, int], int],
               stores: Mapping[int, PartitionStore], fact_high: Mapping[int, int],
               *, wait: bool = False) -> None:
        """Outputs first, then state with the offsets it reflects, then the commit."""
        self.producer.flush()
        _checkpoint_stores(stores, fact_high)
        # The commit metadata remembers the fact offset of the checkpoint, so facts
        # after it can be re-routed even when the local state is gone.
        offsets = [TopicPartition(t, p, o, metadata=str(stores[p].fact_offset()))
                   for (t, p), o in positions.items()]
        if offsets and wait:
            consumer.commit(offsets=offsets, asynchronous=False)
        elif offsets:
            consumer.commit(offsets=offsets, asynchronous=True)

    def start_offset(self, stored: int | None, committed: int | None) -> int | None:
        # The state is written before the commit: it is never behind the group.
        return stored


_unnamed = itertools.count(1)


def checkpoint_for(settings: StreamsSettings, codec: EventCodec, group_id: str,
                   on_delivered: Callable[[Message], None]) -> Checkpoint:
    """The part the settings choose. A named member's transactional id is its group and
    name, stable across its restarts so each fences the last; an unnamed one's is unique
    to the process and the processor (two of one group in a process must not fence each
    other), so a dead one's open transaction ends by the transaction timeout instead."""
    if not settings.transactions:
        return FlushCheckpoint(settings, codec, on_delivered)
    member = settings.member or f"{settings.member_id()}.{next(_unnamed)}"
    return TransactionalCheckpoint(settings, codec, f"{group_id}.{member}", on_delivered)
