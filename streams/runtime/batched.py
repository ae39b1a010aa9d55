"""The batched shell: confluent-kafka + rocksdict, for every hot-path role.

One loop, per batch: consume up to N records or T ms; decode (bad records to
the dead-letter topic); skip inputs already decided (by event id); decide and
evolve; produce facts to the processor's own fact topic (same partition as
the input) and derived outputs elsewhere; make the batch durable.

Three parts are chosen once, when the shell is built:

- the checkpoint (`_impl.checkpoint`): a Kafka transaction per batch with the
  input offsets in it (exactly-once v2, the default), or flush-then-commit;
- the recovery (`_impl.recovery`): the state is the fold of the processor's
  own facts, or an index of its inputs read again;
- the dedupe (`Dedupe`): how an input already decided is recognised.

Each member of a role's group runs this loop over the partitions the group
gives it. A partition that comes to a member is restored from its fact topic
before anything is decided for it; a member the group moved on from cannot
commit, drops what it decided since its last commit, and joins again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

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
    broker_away,
    consumer_lag,
    log_consume_error,
    make_consumer,
    partition_count,
    positions_past,
    watermarks,
)
from onceflow.streams.kafka.dead_letters import DeadLetterRouter, RecordGate
from onceflow.streams.kafka.producer import EventProducer, TransactionFailed
from onceflow.streams.log import get_logger
from onceflow.streams.runtime._impl.checkpoint import Checkpoint, MemberFenced, checkpoint_for
from onceflow.streams.runtime._impl.recovery import Recovery, Restored, recovery_part
from onceflow.streams.runtime.clock import tick_event
from onceflow.streams.runtime.facts import (
    FACT_HEADER_INPUTS,
    FACT_HEADER_MEMBER,
    FactGroups,
    FactRecord,
    dedupes_by_position,
    fact_headers,
)
from onceflow.streams.state.rocksdb import PartitionStore, open_partition_store
from onceflow.streams.topics.catalog import Topic, TopicCatalog
from onceflow.streams.types import Reducer, Routed, Sensor

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["BatchedProcessor", "Clock", "Dedupe", "Recovery", "ReducerError",
           "directory_bytes", "next_batch"]

#: How an input already decided is recognised. "marks": by its event id, a mark kept
#: with the state (an event fact topic: the marks are folded from it). "position": by
#: the input offsets each fact carries (a table fact topic, compacted by entity, under
#: flush checkpoints). "offsets": by the group's committed offsets alone (a table fact
#: topic under transactions: what was decided and the offsets commit together).
#: Under transactions marks still catch what is sent again from outside: a client's
#: retried submission, an agent's report sent twice.
Dedupe = Literal["marks", "position", "offsets"]


@dataclass(frozen=True)
class Clock:
    """Logged time for a processor: ticks into `topic` (one of its inputs), into each
    partition this member owns, every `interval_ms`. Only the owner ticks a partition,
    so time advances once per partition however many members run; under transactions
    the ticks commit with the batch, so a fenced member's never count."""

    topic: str
    interval_ms: int

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

    def on_restore(self, processor: str, partition: int, facts: int, seconds: float) -> None:
        pass

    def on_fenced(self, processor: str, reason: str) -> None:
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
        clock: Clock | None = None,
    ) -> None:
        self.reducer = reducer
        self.consumer_overrides = dict(consumer_overrides or {})
        self.settings = settings
        self.inputs = list(inputs)
        self.fact_topic = fact_topic
        self.codec = codec or SingleObjectCodec()
        self.group_id = group_id or f"onceflow.{reducer.name}"
        self.state_dir = Path(state_dir or settings.member_state_dir())
        self.clock = clock
        if clock is not None and clock.topic not in self.inputs:
            raise ValueError(f"{reducer.name}: the clock ticks into one of its inputs, "
                             f"not {clock.topic!r}")
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
        self.member = settings.member_id()
        self.log = get_logger(processor=reducer.name, member=self.member)
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
        #: per partition: ids of facts already in the topic that a rebuild from
        #: inputs must not send again
        self._sent_before: dict[int, set[str]] = {}
        self._fact_high: dict[int, int] = {}
        # The parts, chosen once (module doc).
        self.checkpointing: Checkpoint = checkpoint_for(settings, self.codec, self.group_id,
                                                        self._delivered)
        self.recovery = recovery_part(recovery)
        # A table fact topic (compacted by entity) keeps only the latest fact
        # per key, so what was decided is not known by dedupe marks folded from it
        # (see streams.runtime.facts).
        self.dedupe: Dedupe = (
            "marks" if not dedupes_by_position(settings, fact_topic)
            else "position" if self.checkpointing.partial_decisions else "offsets")
        self._fact_key = EventProducer.key_rule(self._fact_topic)
        self._member_header = (FACT_HEADER_MEMBER, self.member.encode())
        self._input_index = {t: i for i, t in enumerate(self.inputs)}
        self._positions: dict[int, list[int]] = {}
        self._dlq = DeadLetterRouter(self.checkpointing.producer, self.dead_letter_topic,
                                     reducer.name)
        self._consumer: Consumer | None = None
        self._ready_sent = False
        self._last_commit = 0.0
        self._last_tick = 0.0
        self._tick_sequence = 0
        self._uncommitted: dict[tuple[str, int], int] = {}
        #: per input partition: the offset this member last committed (or started from)
        self._committed: dict[tuple[str, int], int] = {}
        self._last_marker_check = 0.0
        #: set when the group moved on from this member inside a rebalance callback
        self._fenced: MemberFenced | None = None
        self.processed = 0
        self.facts_emitted = 0
        self.fenced_times = 0
        #: per partition: how long its last restore took, and the facts it folded
        self.restores: dict[int, tuple[float, int]] = {}
        self._last_report = 0.0

    @property
    def _producer(self) -> EventProducer:
        return self.checkpointing.producer

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

    def _join(self, *, check: bool = True) -> Consumer:
        consumer = make_consumer(self.settings, self.group_id, **self.consumer_overrides)
        self._consumer = consumer
        if check:  # once, at the start: a member joining again asks the brokers nothing
            self._check_copartitioning(consumer)
        consumer.subscribe(
            self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        consumer: Consumer | None = self._join()
        self.log.info("processor.started", inputs=self.inputs, facts=self.fact_topic,
                      group=self.group_id, tables=self.tables,
                      checkpoint=self.checkpointing.mode, dedupe=self.dedupe)
        if self.tables:
            self._open_tables()
        try:
            while not self._stop.is_set():
                try:
                    if consumer is None:
                        consumer = self._join(check=False)
                    self._step(consumer)
                except MemberFenced as exc:
                    self._leave(consumer, exc)
                    consumer = None
                except TransactionFailed as exc:  # a send refused: the transaction is dead
                    self._leave(consumer, MemberFenced(str(exc), producer_dead=exc.fenced))
                    consumer = None
                except KafkaException as exc:
                    if not broker_away(exc):
                        raise
                    # The brokers went away (a restart, a network cut) in the middle of
                    # a batch or of joining: what was not committed is dropped, and the
                    # member joins again once they answer.
                    self._leave(consumer, MemberFenced(f"the brokers are away: {exc.args[0]}"))
                    consumer = None
                    self._stop.wait(1.0)
        finally:
            self.log.info("processor.stopping", processed=self.processed,
                          facts=self.facts_emitted)
            try:
                if consumer is not None and (self._uncommitted
                                             or self.checkpointing.producer.in_transaction):
                    with contextlib.suppress(MemberFenced):
                        self._checkpoint(consumer, wait=True)
                if consumer is not None:
                    consumer.close()
                self.checkpointing.close()
                if self._tables is not None:
                    self._tables.close()
            finally:
                for store in self._stores.values():
                    store.close()
                self._stores.clear()

    def _step(self, consumer: Consumer) -> None:
        if self._tables is not None:
            self._observe_tables(self._tables.read(timeout=0))
        msgs = next_batch(consumer, self.settings.batch_size,
                          self.settings.batch_timeout_ms / 1000)
        if self._fenced is not None:
            fenced, self._fenced = self._fenced, None
            raise fenced
        if self.clock is not None:
            self._maybe_tick()
        if msgs:
            self._process_batch(consumer, msgs)
        else:
            self._step_over_markers(consumer)
            self._maybe_checkpoint(consumer)
        if self._written is not None:
            self._maybe_report_partitions(consumer)

    def _leave(self, consumer: Consumer | None, fenced: MemberFenced) -> None:
        """The group moved on from this member, or the brokers went away: drop everything
        not committed (the stores, the open transaction) and leave, with a new producer
        for when it joins again (the loop's next turn); the partitions the group gives
        it then are restored from their fact topics."""
        self.fenced_times += 1
        self.log.warning("member.fenced", reason=str(fenced)[:300],
                         partitions=sorted(self._stores))
        self.sensor.on_fenced(self.reducer.name, str(fenced)[:200])
        self._drop_partitions(sorted(self._stores), wipe=False)
        self.checkpointing.abort()
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()
        self.checkpointing = checkpoint_for(self.settings, self.codec, self.group_id,
                                            self._delivered)
        self._dlq = DeadLetterRouter(self.checkpointing.producer, self.dead_letter_topic,
                                     self.reducer.name)

    def _drop_partitions(self, partitions: Sequence[int], *, wipe: bool) -> None:
        """Close the stores of `partitions` without writing what they hold uncommitted;
        `wipe`: delete their directories too (partitions this member lost)."""
        for p in partitions:
            store = self._stores.pop(p, None)
            if store is not None:
                store.rollback()
                store.close()
                if wipe:
                    shutil.rmtree(store.path, ignore_errors=True)
            self._pending.pop(p, None)
            self._positions.pop(p, None)
            self._sent_before.pop(p, None)
            self._fact_high.pop(p, None)
        self._uncommitted = {tp: o for tp, o in self._uncommitted.items()
                             if tp[1] not in partitions}
        self._committed = {tp: o for tp, o in self._committed.items()
                           if tp[1] not in partitions}

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

    # -- the clock -------------------------------------------------------------------

    def _maybe_tick(self) -> None:
        assert self.clock is not None
        now = time.monotonic()
        if (now - self._last_tick) * 1000 < self.clock.interval_ms or not self._stores:
            return
        self._last_tick = now
        self._tick_sequence += 1
        at = int(time.time() * 1000)
        self.checkpointing.begin()
        for p in sorted(self._stores):
            self._producer.send(self.clock.topic,
                                tick_event(self.clock.topic, p, at, self._tick_sequence),
                                partition=p)

    # -- the batch -----------------------------------------------------------------

    def _delivered(self, msg: Message) -> None:
        if msg.topic() == self.fact_topic:
            p = msg.partition() or 0
            offset = msg.offset() or 0
            if offset > self._fact_high.get(p, -1):
                self._fact_high[p] = offset

    def _process_batch(self, consumer: Consumer, msgs: list[Message]) -> None:
        """Decide a batch, in as many checkpoints as the part bounds it to: under
        transactions nothing decided is visible before its commit, so a batch that
        takes long (a burst on a busy machine) is committed every
        `transaction_max_ms` rather than once at its end, and the grants and
        dispatches at its start reach the agents while their leases are young."""
        start = 0
        while start < len(msgs):
            start = self._process_part(consumer, msgs, start)

    def _process_part(self, consumer: Consumer, msgs: list[Message], start: int) -> int:
        """Decide `msgs` from `start` until the part's time is up; checkpoint what was
        decided; return where the next part starts."""
        started = time.perf_counter()
        bound = self.checkpointing.open_for_s
        facts_before = self.facts_emitted
        stores = self._stores
        self.checkpointing.begin()
        handle = self._handle_at_position if self.dedupe == "position" else self._handle
        last: dict[tuple[str, int], Message] = {}  # the last record of each partition
        end = start
        for msg in itertools.islice(msgs, start, None):
            end += 1
            if msg.error() is not None:
                log_consume_error(msg, self.log)
                continue
            partition: int = msg.partition()  # type: ignore[assignment]
            store = stores.get(partition)
            if store is None:  # revoked while the batch was in flight
                continue
            handle(store, partition, msg)
            last[msg.topic(), partition] = msg  # type: ignore[index]
            if bound is not None and time.perf_counter() - started >= bound:
                break
        for (topic, partition), msg in last.items():
            store = stores.get(partition)
            if store is not None:
                next_offset: int = msg.offset() + 1  # type: ignore[operator]
                store.set_input_offset(topic, next_offset)
                self._uncommitted[(topic, partition)] = next_offset
        self.processed += end - start
        self.sensor.on_batch(self.reducer.name, end - start,
                             self.facts_emitted - facts_before,
                             time.perf_counter() - started)
        if self._written:
            self.sensor.on_facts(self.reducer.name, self._written)
            self._written = []
        self._maybe_checkpoint(consumer)
        return end

    def _step_over_markers(self, consumer: Consumer) -> None:
        """When idle, commit the consumer's position where it passed what no record shows:
        the commit marker that ends an input written in a transaction (a role's outputs
        are), which the offset after the last record stops short of. Without it a group
        that read everything would stay one behind the log's end for good."""
        now = time.monotonic()
        if (now - self._last_marker_check) * 1000 < max(self.settings.checkpoint_interval_ms,
                                                        100):
            return
        self._last_marker_check = now
        for (topic, partition), offset in positions_past(consumer, self._committed).items():
            store = self._stores.get(partition)
            if store is not None and (topic, partition) not in self._uncommitted:
                self._uncommitted[(topic, partition)] = offset
                store.set_input_offset(topic, offset)

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
        """Checkpoint when the part says it is due (every batch under transactions;
        after an interval otherwise, so a burst of small batches shares one)."""
        if not self._uncommitted and not self._producer.in_transaction:
            return
        if not self.checkpointing.due(time.monotonic() - self._last_commit):
            return
        self._checkpoint(consumer)

    def _checkpoint(self, consumer: Consumer, *, wait: bool = False) -> None:
        self._last_commit = time.monotonic()
        positions = {tp: o for tp, o in self._uncommitted.items() if tp[1] in self._stores}
        self._uncommitted.clear()
        self.checkpointing.commit(consumer, positions, self._stores, self._fact_high,
                                  wait=wait)
        self._committed.update(positions)

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
        marks = self.dedupe == "marks"
        if marks and store.has_seen(event.event_id):
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
        member = self._member_header
        for i in range(total):
            fact = facts[i]
            if i >= written and (sent_before is None or fact.event_id not in sent_before):
                # Straight to the producer: the fact topic, its partition and its key
                # rule are known (send_encoded would look them up for every fact).
                headers = fact_headers(cause, i + 1, total)
                headers.append(member)
                self._producer.send_raw(
                    self.fact_topic, raws[i], key=self._fact_key(fact), partition=partition,
                    headers=[*headers, *position] if position else headers,
                )
                self.facts_emitted += 1
                if self._written is not None:
                    self._written.append(fact)
            evolve(store, fact)
        if marks:
            store.mark_seen(cause, max(f.occurred_at for f in facts))
        if self._routes:
            self._route(facts, raws)

    def _route(self, facts: Sequence[Event], raws: Sequence[bytes]) -> None:
        for fact, raw in zip(facts, raws, strict=True):
            for routed in self.reducer.route(fact):
                self.send_routed(routed, raw if routed.event is fact else None)

    def _close_held(self, store: PartitionStore, partition: int, event: Event,
                    held: list[FactRecord], position: tuple[tuple[str, bytes], ...] = ()
                    ) -> None:
        """Keep the part of a decision written before a crash as the whole decision
        (see `DecisionClosed`): fold and route it, and close its group. Only under
        flush checkpoints: a transaction never leaves part of a decision.

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
        if self.dedupe == "marks":
            store.mark_seen(event.event_id, max(r.fact.occurred_at for r in held))
        self._route([r.fact for r in held], [r.raw for r in held])
        self.log.warning("decision.closed", partition=partition, cause=event.event_id,
                         facts_kept=len(held))

    def send_routed(self, routed: Routed, raw: bytes | None = None) -> None:
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
                self._restore(p, committed)
        for tp in partitions:
            stored = self._stores[tp.partition].input_offset(tp.topic)
            if self.recovery.mode == "inputs":
                offset = stored  # the state is an index of the inputs read up to here
            else:
                group = committed.get((tp.topic, tp.partition))
                offset = self.checkpointing.start_offset(
                    stored, None if group is None or group.offset < 0 else group.offset)
            if offset is not None:
                tp.offset = offset
                self._committed[(tp.topic, tp.partition)] = offset
        if self.dedupe == "position":
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
        revoked = sorted({tp.partition for tp in partitions})
        if self._uncommitted or self._producer.in_transaction:
            try:
                self._checkpoint(consumer, wait=True)
            except MemberFenced as exc:
                # Too late to commit: what was decided since the last commit is dropped
                # with the stores, and the loop joins again.
                self._fenced = exc
                self._drop_partitions(sorted(self._stores), wipe=False)
            except Exception as exc:  # flush checkpoints: recovery by replay covers it
                self.log.warning("checkpoint.on_revoke_failed", error=str(exc)[:200])
        for p in revoked:
            store = self._stores.pop(p, None)
            if store is not None:
                store.close()
            self._pending.pop(p, None)
            self._positions.pop(p, None)
            self._sent_before.pop(p, None)
        self._committed.clear()
        consumer.unassign()
        self.log.info("partitions.revoked", partitions=revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group moved on without this member (its session ended, say while it was
        frozen): whatever it decided since its last commit must never count. Its open
        transaction is aborted (the group's new generation would refuse its offsets
        anyway), every store is dropped uncommitted, and those of the lost partitions
        deleted: another member owns them now."""
        lost = sorted({tp.partition for tp in partitions})
        self.log.warning("partitions.lost", partitions=lost)
        self._drop_partitions(lost, wipe=True)
        self._fenced = MemberFenced(f"partitions {lost} lost to the group")
        self._drop_partitions(sorted(self._stores), wipe=False)
        with contextlib.suppress(Exception):
            consumer.unassign()

    def _restore(self, partition: int, committed: dict[tuple[str, int], TopicPartition]
                 ) -> None:
        horizon = self.settings.retention_horizon_ms
        marks = self.settings.dedupe_min_marks
        store = open_partition_store(self.state_dir, self.reducer.name, partition,
                                     horizon_ms=horizon, min_marks=marks,
                                     layout=self.reducer.state_layout)
        assert self._consumer is not None
        log_end = watermarks(self._consumer, self.fact_topic, partition)[1]  # where facts end
        reason = ("layout" if store.outdated  # an older release, another dedupe rule
                  # The checkpoint is beyond the end of the log: the topic was deleted
                  # and created again (or the broker's data was wiped), so this state
                  # describes a log that no longer exists.
                  else "beyond_log" if store.fact_offset() > log_end else None)
        if reason is not None:
            self.log.warning("state.rebuilt", partition=partition, reason=reason,
                             checkpoint=store.fact_offset(), log_end=log_end)
            store.close()
            store = open_partition_store(self.state_dir, self.reducer.name, partition,
                                         wipe=True, horizon_ms=horizon, min_marks=marks,
                                         layout=self.reducer.state_layout)
        restored: Restored = self.recovery.restore(self, partition, store, log_end, committed)
        self.reducer.restored(partition)
        self._stores[partition] = restored.store
        self._pending[partition] = restored.groups
        if restored.sent_before is not None:
            self._sent_before[partition] = restored.sent_before
        self.restores[partition] = (restored.seconds, restored.facts)
        self.sensor.on_restore(self.reducer.name, partition, restored.facts, restored.seconds)

    # -- inspection ------------------------------------------------------------------

    def fingerprint(self) -> str:
        from onceflow.streams.runtime.fingerprint import fingerprint_partitions

        return fingerprint_partitions({p: list(s.raw_items()) for p, s in self._stores.items()})
