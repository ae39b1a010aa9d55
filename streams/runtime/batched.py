"""The batched shell: confluent-kafka + rocksdict, for every hot-path role.

One loop, per batch: consume up to N records or T ms; decode (bad records to
the dead-letter topic); skip inputs already decided (by event id); decide and
evolve; produce facts to the processor's own fact topic (same partition as
the input) and derived outputs elsewhere; flush; write state and offsets in
one RocksDB write batch; commit the input offsets. No broker transactions.

Recovery is replay: on assignment, a partition's state is opened and the fact
topic is folded from the checkpointed fact offset (0 when the local state is
gone). Inputs reprocessed after a crash are recognised by the dedupe marks
that folding their facts left, so no fact is emitted twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import Consumer, Message, TopicPartition

from onceflow.schemas import (
    SINGLE_OBJECT_MARKER,
    CodecError,
    DecisionClosed,
    Event,
    EventCodec,
    SingleObjectCodec,
)
from onceflow.streams.ids import caused_by
from onceflow.streams.kafka.consumer import (
    TopicFollower,
    consumer_lag,
    log_consume_error,
    make_consumer,
    partition_count,
    read_partition_to_end,
    watermarks,
)
from onceflow.streams.kafka.dead_letters import DeadLetterRouter, RecordGate
from onceflow.streams.kafka.producer import EventProducer
from onceflow.streams.log import get_logger
from onceflow.streams.runtime.facts import (
    FACT_HEADER_INPUTS,
    FactGroups,
    FactRecord,
    dedupes_by_position,
    fact_headers,
    fact_record,
    fold_fact_records,
)
from onceflow.streams.state.rocksdb import PartitionStore, open_partition_store
from onceflow.streams.topics.catalog import Topic, TopicCatalog
from onceflow.streams.types import Reducer, Routed, Sensor

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["BatchedProcessor", "Recovery", "ReducerError", "directory_bytes", "next_batch"]

#: How a partition's state comes back after a restart.
#: "facts": the state is the fold of the processor's own facts (deciders:
#: scheduler, ledger, wallets). "inputs": the state is an index of the inputs
#: seen (checkers, whose facts are findings): inputs are read again from the
#: checkpointed offsets (from 0 when the local state is gone) and decided
#: again, and facts already in the topic are not sent twice.
Recovery = Literal["facts", "inputs"]

_NONE: frozenset[bytes] = frozenset()

def next_batch(consumer: Consumer, max_records: int, wait_s: float) -> list[Message]:
    """Whatever is ready now, up to `max_records`; wait up to `wait_s` only when nothing is.

    `consume(n, timeout)` alone waits the whole timeout unless n records are
    there, which adds the timeout to every hop when traffic is light.
    """
    msgs = consumer.consume(num_messages=max_records, timeout=0)
    if msgs:
        return msgs
    first = consumer.consume(num_messages=1, timeout=wait_s)
    if not first:
        return first
    return first + consumer.consume(num_messages=max_records - 1, timeout=0)


class ReducerError(RuntimeError):
    """The reducer raised while deciding on an input; the input is dead-lettered."""


class _NullSensor:
    def on_batch(self, processor: str, records: int, facts: int, seconds: float) -> None:
        pass

    def on_dead_letter(self, processor: str, topic: str, error: str) -> None:
        pass

    def on_facts(self, processor: str, facts: Sequence[Event]) -> None:
        pass

    def on_partitions(self, processor: str, lag: Mapping[tuple[str, int], int],
                      state_bytes: Mapping[int, int]) -> None:
        pass


def directory_bytes(path: Path) -> int:
    """The bytes of the files under `path` (a RocksDB directory: its SSTs and logs)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # compacted away while we looked
                continue
    return total


class BatchedProcessor:
    def __init__(
        self,
        reducer: Reducer,
        settings: StreamsSettings,
        *,
        inputs: Sequence[str],
        fact_topic: str,
        codec: EventCodec | None = None,
        group_id: str | None = None,
        state_dir: Path | None = None,
        dead_letter_topic: str | None = None,
        sensor: Sensor | None = None,
        on_ready: Callable[[], None] | None = None,
        tables: Sequence[str] = (),
        recovery: Recovery = "facts",
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.reducer = reducer
        self.recovery: Recovery = recovery
        self.consumer_overrides = dict(consumer_overrides or {})
        #: per partition: ids of facts already in the topic that a rebuild from
        #: inputs must not send again
        self._sent_before: dict[int, set[str]] = {}
        self.settings = settings
        self.inputs = list(inputs)
        self.fact_topic = fact_topic
        self.codec = codec or SingleObjectCodec()
        self.group_id = group_id or f"onceflow.{reducer.name}"
        self.state_dir = Path(state_dir or settings.state_dir)
        self._catalog = TopicCatalog(settings)
        self.dead_letter_topic = dead_letter_topic or self._catalog["deadletters"].name
        # Facts are keyed by the catalog's rule for their topic (a table
        # topic such as wallets is compacted by its entity, not the event id).
        self._fact_topic: Topic | str = self._catalog.by_name(fact_topic) or fact_topic
        from onceflow.streams.metrics import active_sensor

        self.sensor: Sensor = sensor or active_sensor() or _NullSensor()
        #: the facts this batch wrote, for the sensor (None: nobody listens)
        self._written: list[Event] | None = None if isinstance(self.sensor, _NullSensor) \
            else []
        self.on_ready = on_ready
        self.tables = list(tables)
        self._tables: TopicFollower | None = None
        self.log = get_logger(processor=reducer.name)
        # Per input topic: known event types the reducer ignores, by Avro fingerprint,
        # skipped undecoded; on a topic that declares what it carries, only those (any
        # other type there was sent to the wrong topic, and is decoded to say so).
        self._gate = RecordGate.for_topics(settings, self.inputs)
        self._ignored: dict[str, frozenset[bytes]] = {}
        if reducer.accepts is not None and isinstance(self.codec, SingleObjectCodec):
            for name in self.inputs:
                carries = self._gate.carries.get(name)
                self._ignored[name] = frozenset(
                    fp for fp, entry in self.codec.registry.by_fingerprint.items()
                    if entry.event_type not in reducer.accepts
                    and (carries is None or entry.event_type in carries))
        # A reducer that never overrides `route` derives no outputs: no call per fact.
        self._routes = (getattr(type(reducer), "route", Reducer.route) is not Reducer.route
                        or "route" in getattr(reducer, "__dict__", {}))
        self._stop = threading.Event()
        self._stores: dict[int, PartitionStore] = {}
        self._pending: dict[int, FactGroups] = {}
        self._fact_high: dict[int, int] = {}
        # Facts go out as they are decided and the flush waits for the
        # checkpoint interval; a short linger still groups a batch's facts
        # into few record batches (see `processor_linger_ms`).
        self._producer = EventProducer(settings, self.codec, on_delivered=self._delivered,
                                       **{"linger.ms": settings.processor_linger_ms})
        self._fact_key = self._producer.key_rule(self._fact_topic)
        # A table fact topic (compacted by entity) keeps only the latest fact
        # per key, so what was decided is known by input position, carried in
        # each fact's headers, not by dedupe marks (see streams.runtime.facts).
        self._by_position = dedupes_by_position(settings, fact_topic)
        self._input_index = {t: i for i, t in enumerate(self.inputs)}
        self._positions: dict[int, list[int]] = {}
        self._dlq = DeadLetterRouter(self._producer, self.dead_letter_topic, reducer.name)
        self._consumer: Consumer | None = None
        self._ready_sent = False
        self._last_commit = 0.0
        self._uncommitted: dict[tuple[str, int], int] = {}
        self.processed = 0
        self.facts_emitted = 0
        self._last_report = 0.0

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _check_copartitioning(self, consumer: Consumer) -> None:
        counts = {t: partition_count(consumer, t) for t in [*self.inputs, self.fact_topic]}
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"{self.reducer.name}: inputs and fact topic must be co-partitioned "
                f"(equal partition counts), got {counts}"
            )

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        consumer = make_consumer(self.settings, self.group_id, **self.consumer_overrides)
        self._consumer = consumer
        self._check_copartitioning(consumer)
        consumer.subscribe(
            self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self.log.info("processor.started", inputs=self.inputs, facts=self.fact_topic,
                      group=self.group_id, tables=self.tables)
        if self.tables:
            self._open_tables()
        try:
            while not self._stop.is_set():
                if self._tables is not None:
                    self._observe_tables(self._tables.read(timeout=0))
                msgs = next_batch(consumer, self.settings.batch_size,
                                  self.settings.batch_timeout_ms / 1000)
                if msgs:
                    self._process_batch(consumer, msgs)
                else:
                    self._maybe_checkpoint(consumer)
                if self._written is not None:
                    self._maybe_report_partitions(consumer)
        finally:
            self.log.info("processor.stopping", processed=self.processed,
                          facts=self.facts_emitted)
            try:
                if self._uncommitted:
                    self._checkpoint(consumer, wait=True)
                consumer.close()
                if self._tables is not None:
                    self._tables.close()
            finally:
                for store in self._stores.values():
                    store.close()
                self._stores.clear()

    # -- global tables ---------------------------------------------------------------

    def _open_tables(self) -> None:
        """Read every partition of the table topics up to their ends before deciding
        anything; later records are picked up between batches."""
        self._tables = TopicFollower(self.settings, self.tables)
        self._observe_tables(self._tables.read_to_end())

    def _observe_tables(self, msgs: Iterator[Message]) -> None:
        for msg in msgs:
            try:
                self.reducer.observe(self.codec.decode(msg.value()))  # type: ignore[arg-type]
            except CodecError as exc:
                # Not ours to dead-letter: every reader of the table would.
                self.log.warning("table.record_skipped", topic=msg.topic(), error=str(exc)[:200])

    # -- the batch -----------------------------------------------------------------

    def _delivered(self, msg: Message) -> None:
        if msg.topic() == self.fact_topic:
            p = msg.partition() or 0
            offset = msg.offset() or 0
            if offset > self._fact_high.get(p, -1):
                self._fact_high[p] = offset

    def _process_batch(self, consumer: Consumer, msgs: list[Message]) -> None:
        started = time.perf_counter()
        facts_before = self.facts_emitted
        stores = self._stores
        handle = self._handle_at_position if self._by_position else self._handle
        last: dict[tuple[str, int], Message] = {}  # the last record of each partition
        for msg in msgs:
            if msg.error() is not None:
                log_consume_error(msg, self.log)
                continue
            partition: int = msg.partition()  # type: ignore[assignment]
            store = stores.get(partition)
            if store is None:  # revoked while the batch was in flight
                continue
            handle(store, partition, msg)
            last[msg.topic(), partition] = msg  # type: ignore[index]
        for (topic, partition), msg in last.items():
            store = stores.get(partition)
            if store is not None:
                next_offset: int = msg.offset() + 1  # type: ignore[operator]
                store.set_input_offset(topic, next_offset)
                self._uncommitted[(topic, partition)] = next_offset
        self.processed += len(msgs)
        self.sensor.on_batch(self.reducer.name, len(msgs), self.facts_emitted - facts_before,
                             time.perf_counter() - started)
        if self._written:
            self.sensor.on_facts(self.reducer.name, self._written)
            self._written = []
        self._maybe_checkpoint(consumer)

    def _maybe_report_partitions(self, consumer: Consumer) -> None:
        """Lag and state size to the sensor, every `metrics_interval_ms` (only when a
        sensor listens: the directory walk is not free)."""
        now = time.monotonic()
        if (now - self._last_report) * 1000 < self.settings.metrics_interval_ms:
            return
        self._last_report = now
        self.sensor.on_partitions(
            self.reducer.name, consumer_lag(consumer),
            {p: directory_bytes(store.path) for p, store in sorted(self._stores.items())})

    def _maybe_checkpoint(self, consumer: Consumer) -> None:
        """Checkpoint when the interval is up, so a burst of small batches shares one.

        Facts and routed outputs are sent as they are decided (nobody waits
        for a checkpoint to see them); what waits is the promise that state
        and input offsets never get ahead of the outputs in the log.
        """
        if not self._uncommitted:
            return
        if (time.monotonic() - self._last_commit) * 1000 < self.settings.checkpoint_interval_ms:
            return
        self._checkpoint(consumer)

    def _checkpoint(self, consumer: Consumer, *, wait: bool = False) -> None:
        """Outputs first, then state with the offsets it reflects, then the commit."""
        self._last_commit = time.monotonic()
        self._producer.flush()
        for partition, store in self._stores.items():
            if store.has_changes():
                high = self._fact_high.get(partition)
                store.checkpoint(None if high is None else high + 1)
        offsets = [
            TopicPartition(t, p, o, metadata=str(self._stores[p].fact_offset()))
            for (t, p), o in self._uncommitted.items() if p in self._stores
        ]
        self._uncommitted.clear()
        if offsets and wait:
            consumer.commit(offsets=offsets, asynchronous=False)
        elif offsets:
            consumer.commit(offsets=offsets, asynchronous=True)

    def _handle_at_position(self, store: PartitionStore, partition: int, msg: Message) -> None:
        positions = self._positions[partition]
        positions[self._input_index[msg.topic()]] = msg.offset() + 1  # type: ignore[index,operator]
        self._handle(store, partition, msg,
                     ((FACT_HEADER_INPUTS, ",".join(map(str, positions)).encode()),))

    def _handle(self, store: PartitionStore, partition: int, msg: Message,
                position: tuple[tuple[str, bytes], ...] = ()) -> None:
        raw = msg.value()
        topic: str = msg.topic()  # type: ignore[assignment]
        if raw is not None:
            oversized = self._gate.before(raw)
            if oversized is not None:
                self._dead_letter(msg, oversized)
                return
            if raw[2:10] in self._ignored.get(topic, _NONE) and raw[:2] == SINGLE_OBJECT_MARKER:
                return  # a well-formed event of a type this reducer never acts on
        try:
            if raw is None:
                raise CodecError("record has no value (tombstone) on an event topic")
            event = self.codec.decode(raw)
        except CodecError as exc:
            self._dead_letter(msg, exc)
            return
        misrouted = self._gate.after(event.event_type, topic)
        if misrouted is not None:
            self._dead_letter(msg, misrouted)
            return
        if store.has_seen(event.event_id):
            return
        try:
            facts = list(self.reducer.decide(store, event))
        except Exception as exc:
            self.log.exception("reducer.decide_failed", event_id=event.event_id)
            self._dead_letter(msg, ReducerError(f"{type(exc).__name__}: {exc}"))
            return
        groups = self._pending.get(partition)
        held = groups.pending.pop(event.event_id, None) if groups else None
        raws = [self.codec.encode(fact) for fact in facts]
        if held is not None and not (  # the new decision must go on from the written part
                len(raws) > len(held)
                and all(h.raw == r for h, r in zip(held, raws[:len(held)], strict=True))):
            self._close_held(store, partition, event, held, position)
            return
        if not facts:
            return
        total = len(facts)
        # In the topic already: the held part (repeated byte for byte, checked
        # above), or facts re-found while rebuilding from inputs.
        written = len(held) if held is not None else 0
        sent_before = self._sent_before.get(partition)
        cause, evolve = event.event_id, self.reducer.evolve
        for i in range(total):
            fact = facts[i]
            if i >= written and (sent_before is None or fact.event_id not in sent_before):
                # Straight to the producer: the fact topic, its partition and its key
                # rule are known (send_encoded would look them up for every fact).
                headers = fact_headers(cause, i + 1, total)
                self._producer.send_raw(
                    self.fact_topic, raws[i], key=self._fact_key(fact), partition=partition,
                    headers=[*headers, *position] if position else headers,
                )
                self.facts_emitted += 1
                if self._written is not None:
                    self._written.append(fact)
            evolve(store, fact)
        if not self._by_position:
            store.mark_seen(cause, max(f.occurred_at for f in facts))
        if self._routes:
            self._route(facts, raws)

    def _route(self, facts: Sequence[Event], raws: Sequence[bytes]) -> None:
        for fact, raw in zip(facts, raws, strict=True):
            for routed in self.reducer.route(fact):
                self._send_routed(routed, raw if routed.event is fact else None)

    def _close_held(self, store: PartitionStore, partition: int, event: Event,
                    held: list[FactRecord], position: tuple[tuple[str, bytes], ...] = ()
                    ) -> None:
        """Keep the part of a decision written before a crash as the whole decision
        (see `DecisionClosed`): fold and route it, and close its group.

        Whatever the rest of the decision would have done is left to later
        inputs (a scheduler's ticks re-examine what is still waiting).
        """
        closing = DecisionClosed(
            **caused_by(event, "decision-closed"), processor=self.reducer.name, facts_kept=len(held),
            reason="the decision made again after a restart differs from the facts "
                   "written before it",
        )
        n = len(held) + 1
        self._producer.send(self._fact_topic, closing, partition=partition,
                            headers=[*fact_headers(event.event_id, n, n), *position])
        self.facts_emitted += 1
        for record in held:
            self.reducer.evolve(store, record.fact)
        if not self._by_position:
            store.mark_seen(event.event_id, max(r.fact.occurred_at for r in held))
        self._route([r.fact for r in held], [r.raw for r in held])
        self.log.warning("decision.closed", partition=partition, cause=event.event_id,
                         facts_kept=len(held))

    def _send_routed(self, routed: Routed, raw: bytes | None = None) -> None:
        """Send a derived output; a fact routed as it is reuses its encoding."""
        topic = self._catalog.by_name(routed.topic) or routed.topic
        if raw is None:
            self._producer.send(topic, routed.event, partition=routed.partition)
        else:
            self._producer.send_encoded(topic, routed.event, raw, partition=routed.partition)

    def _dead_letter(self, msg: Message, exc: BaseException) -> None:
        self.log.warning("record.dead_lettered", topic=msg.topic(), partition=msg.partition(),
                         offset=msg.offset(), error=str(exc)[:200])
        self._dlq.route(msg, exc)
        self.sensor.on_dead_letter(self.reducer.name, str(msg.topic()), str(exc))

    # -- assignment and recovery ---------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        wanted = sorted({tp.partition for tp in partitions})
        committed: dict[tuple[str, int], TopicPartition] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                committed[(tp.topic, tp.partition)] = tp
        except Exception as exc:  # a fresh group has nothing committed
            self.log.info("committed.unavailable", error=str(exc))
        for p in wanted:
            if p not in self._stores:
                self._stores[p] = self._recover(p, committed)
        for tp in partitions:
            offset = self._stores[tp.partition].input_offset(tp.topic)
            if offset is not None:
                tp.offset = offset
        if self._by_position:
            for p in wanted:
                self._positions[p] = [-1] * len(self.inputs)
            for tp in partitions:
                start = tp.offset
                if start < 0 and (tp.topic, tp.partition) in committed:
                    start = committed[(tp.topic, tp.partition)].offset
                self._positions[tp.partition][self._input_index[tp.topic]] = max(start, -1)
        consumer.assign(partitions)
        self.log.info("partitions.assigned", partitions=wanted)
        if not self._ready_sent and self.on_ready is not None:
            self._ready_sent = True
            self.on_ready()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._uncommitted:
            try:
                self._checkpoint(consumer, wait=True)
            except Exception as exc:  # lost partitions: recovery by replay covers it
                self.log.warning("checkpoint.on_revoke_failed", error=str(exc)[:200])
        for p in sorted({tp.partition for tp in partitions}):
            store = self._stores.pop(p, None)
            if store is not None:
                store.close()
            self._pending.pop(p, None)
            self._positions.pop(p, None)
        consumer.unassign()
        self.log.info("partitions.revoked", partitions=sorted({tp.partition for tp in partitions}))

    def _recover(
        self, partition: int, committed: dict[tuple[str, int], TopicPartition]
    ) -> PartitionStore:
        horizon = self.settings.retention_horizon_ms
        marks = self.settings.dedupe_min_marks
        store = open_partition_store(self.state_dir, self.reducer.name, partition,
                                     horizon_ms=horizon, min_marks=marks,
                                     layout=self.reducer.state_layout)
        assert self._consumer is not None
        log_end = watermarks(self._consumer, self.fact_topic, partition)[1]  # where facts end
        if store.outdated:
            # kept by an older release, or with another rule for its dedupe marks
            self.log.warning("state.rebuilt", partition=partition, reason="layout")
            store.close()
            store = open_partition_store(self.state_dir, self.reducer.name, partition,
                                         wipe=True, horizon_ms=horizon, min_marks=marks,
                                         layout=self.reducer.state_layout)
        if store.fact_offset() > log_end:
            # The checkpoint is beyond the end of the log: the topic was
            # deleted and created again (or the broker's data was wiped), so
            # this state describes a log that no longer exists.
            self.log.warning("state.discarded", partition=partition,
                             checkpoint=store.fact_offset(), log_end=log_end)
            store.close()
            store = open_partition_store(self.state_dir, self.reducer.name, partition,
                                         wipe=True, horizon_ms=horizon, min_marks=marks,
                                         layout=self.reducer.state_layout)
        if self.recovery == "inputs":
            return self._recover_from_inputs(partition, store, log_end)
        start = store.fact_offset()
        # The commit metadata remembers the fact offset of the last checkpoint,
        # so facts after it (whose derived outputs may not have been sent) can
        # be re-routed even when the local state is gone.
        reroute_from = start
        for topic in self.inputs:
            tp = committed.get((topic, partition))
            if tp is not None and tp.metadata and store.fresh:
                with contextlib.suppress(ValueError):
                    reroute_from = max(reroute_from, int(tp.metadata))
        started = time.perf_counter()
        groups = FactGroups()
        folded = 0
        reroute: list[FactRecord] = []

        def records() -> Iterator[FactRecord]:
            if start >= log_end:
                return
            for msg in read_partition_to_end(self.settings, self.fact_topic, partition, start):
                record = fact_record(msg, self.codec)
                if record is not None:
                    yield record

        position: tuple[int, ...] | None = None
        for item in fold_fact_records(self.reducer, store, records(), groups,
                                      mark_seen=not self._by_position):
            folded += 1
            position = item.inputs or position
            if item.offset >= reroute_from:
                reroute.append(item)
        if self._by_position and position is not None:
            # Inputs up to the last folded decision are decided: resume after them.
            for topic, offset in zip(self.inputs, position, strict=False):
                if offset >= 0 and offset > (store.input_offset(topic) or -1):
                    store.set_input_offset(topic, offset)
        for item in reroute:
            for routed in self.reducer.route(item.fact):
                self._send_routed(routed)
        self._producer.flush()
        # Compaction may have removed the records just before the end, and
        # nothing is written here while the partition is being recovered.
        store.checkpoint(max(log_end, start))
        self._pending[partition] = groups
        self.log.info(
            "partition.recovered", partition=partition, from_offset=start, facts=folded,
            held=len(groups.pending), rerouted=len(reroute),
            seconds=round(time.perf_counter() - started, 3),
        )
        return store

    def _recover_from_inputs(self, partition: int, store: PartitionStore, log_end: int
                             ) -> PartitionStore:
        """Re-read the inputs from the checkpoint (0 when the state is gone), remembering
        which facts are in the topic already so that re-deciding sends none twice."""
        started = time.perf_counter()
        start = store.fact_offset()
        sent: set[str] = set()
        if start < log_end:
            for msg in read_partition_to_end(self.settings, self.fact_topic, partition, start):
                record = fact_record(msg, self.codec)
                if record is not None:
                    sent.add(record.fact.event_id)
        if store.fresh:
            for topic in self.inputs:
                store.set_input_offset(topic, 0)
        store.checkpoint(max(log_end, start))
        self._sent_before[partition] = sent
        self.log.info("partition.recovered", partition=partition, mode="inputs",
                      from_offset=start, facts_in_topic=len(sent),
                      seconds=round(time.perf_counter() - started, 3))
        return store

    # -- inspection ------------------------------------------------------------------

    def fingerprint(self) -> str:
        from onceflow.streams.runtime.fingerprint import fingerprint_partitions

        return fingerprint_partitions({p: list(s.raw_items()) for p, s in self._stores.items()})

