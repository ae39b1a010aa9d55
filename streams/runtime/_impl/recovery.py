"""How a partition's state comes back when the partition comes to a member.

Two parts, chosen once per processor by its `Recovery` mode:

- `FactsRecovery` (deciders: scheduler, ledger, wallets, trust, limiter): the
  state is the fold of the processor's own facts, its changelog. The local
  checkpoint is opened and the facts after it folded (from 0 when the state
  is gone, or was kept by another member that lost the partition since).
- `InputsRecovery` (checkers, whose facts are findings): the state is an
  index of the inputs seen; inputs are read again from the checkpoint (from 0
  when the state is gone) and decided again, and facts already in the topic
  are not sent twice.

Either way nothing is decided for the partition before it is restored; the
time it took is logged and given to the sensor (`on_restore`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from confluent_kafka import TopicPartition

from onceflow.streams.kafka.consumer import read_partition_to_end
from onceflow.streams.runtime.facts import FactGroups, FactRecord, fact_record, fold_fact_records
from onceflow.streams.state.rocksdb import PartitionStore

if TYPE_CHECKING:
    from onceflow.streams.runtime.batched import BatchedProcessor

__all__ = ["FactsRecovery", "InputsRecovery", "Recovery", "RecoveryPart", "Restored",
           "recovery_part"]

#: How a partition's state comes back after a restart (module doc).
Recovery = Literal["facts", "inputs"]


@dataclass
class Restored:
    """A partition's state, ready to decide; and what recovery found on the way."""

    store: PartitionStore
    #: decisions only partly in the log (flush checkpoints only)
    groups: FactGroups = field(default_factory=FactGroups)
    #: ids of facts already in the topic that deciding again must not send (inputs mode)
    sent_before: set[str] | None = None
    facts: int = 0
    seconds: float = 0.0


class RecoveryPart:
    mode: Recovery

    def restore(self, shell: BatchedProcessor, partition: int, store: PartitionStore,
                log_end: int, committed: dict[tuple[str, int], TopicPartition]) -> Restored:
        raise NotImplementedError


class FactsRecovery(RecoveryPart):
    mode: Recovery = "facts"

    def restore(self, shell: BatchedProcessor, partition: int, store: PartitionStore,
                log_end: int, committed: dict[tuple[str, int], TopicPartition]) -> Restored:
        started = time.perf_counter()
        start = store.fact_offset()
        part = shell.checkpointing
        reroute_from = start
        if part.reroutes_after_restart and store.fresh:
            # The commit metadata remembers the fact offset of the last checkpoint,
            # so facts after it (whose derived outputs may not have been sent) can
            # be re-routed even when the local state is gone.
            for topic in shell.inputs:
                tp = committed.get((topic, partition))
                if tp is not None and tp.metadata:
                    with contextlib.suppress(ValueError):
                        reroute_from = max(reroute_from, int(tp.metadata))

        def records() -> Iterator[FactRecord]:
            if start >= log_end:
                return
            for msg in read_partition_to_end(shell.settings, shell.fact_topic, partition, start):
                record = fact_record(msg, shell.codec)
                if record is not None:
                    yield record

        groups = FactGroups()
        folded = 0
        reroute: list[FactRecord] = []
        position: tuple[int, ...] | None = None
        for item in fold_fact_records(shell.reducer, store, records(), groups,
                                      mark_seen=shell.dedupe == "marks"):
            folded += 1
            position = item.inputs or position
            if part.reroutes_after_restart and item.offset >= reroute_from:
                reroute.append(item)
        if shell.dedupe == "position" and position is not None:
            # Inputs up to the last folded decision are decided: resume after them.
            for topic, offset in zip(shell.inputs, position, strict=False):
                if offset >= 0 and offset > (store.input_offset(topic) or -1):
                    store.set_input_offset(topic, offset)
        for item in reroute:
            for routed in shell.reducer.route(item.fact):
                shell.send_routed(routed)
        if reroute:
            part.producer.flush()
        # Compaction may have removed the records just before the end, and
        # nothing is written here while the partition is being restored.
        store.checkpoint(max(log_end, start))
        if not part.partial_decisions:
            groups = FactGroups()  # every decision in the log is whole
        shell.log.info("partition.recovered", partition=partition, from_offset=start,
                       facts=folded, held=len(groups.pending), rerouted=len(reroute),
                       seconds=round(time.perf_counter() - started, 3))
        return Restored(store, groups, None, folded, time.perf_counter() - started)


class InputsRecovery(RecoveryPart):
    mode: Recovery = "inputs"

    def restore(self, shell: BatchedProcessor, partition: int, store: PartitionStore,
                log_end: int, committed: dict[tuple[str, int], TopicPartition]) -> Restored:
        """Re-read the inputs from the checkpoint (0 when the state is gone), remembering
        which facts are in the topic already so that re-deciding sends none twice."""
        started = time.perf_counter()
        start = store.fact_offset()
        sent: set[str] = set()
        if start < log_end:
            for msg in read_partition_to_end(shell.settings, shell.fact_topic, partition, start):
                record = fact_record(msg, shell.codec)
                if record is not None:
                    sent.add(record.fact.event_id)
        if store.fresh:
            for topic in shell.inputs:
                store.set_input_offset(topic, 0)
        store.checkpoint(max(log_end, start))
        shell.log.info("partition.recovered", partition=partition, mode="inputs",
                       from_offset=start, facts_in_topic=len(sent),
                       seconds=round(time.perf_counter() - started, 3))
        return Restored(store, FactGroups(), sent, len(sent), time.perf_counter() - started)


def recovery_part(mode: Recovery) -> RecoveryPart:
    return FactsRecovery() if mode == "facts" else InputsRecovery()
