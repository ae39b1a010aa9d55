"""The ledger sink: line items from Kafka into DuckDB, exactly once.

Not a consumer group member: every replica assigns itself every partition of
the ledger at the offsets its own database holds, so each holds a full copy.
A batch's rows and the offsets after them commit in one DuckDB transaction;
after a crash the sink resumes at exactly the offsets its rows reflect, and
a line item produced twice is ignored (the engine's window of recent ids).

Line items written with the current schema are decoded a batch at a time
into Arrow columns (`schemas.decode_bodies`); older versions, and a batch
with a corrupt body in it, are decoded record by record.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from onceflow.billing.views._impl.engine import LEDGER_COLUMNS, ViewEngine
from onceflow.schemas import (
    SINGLE_OBJECT_MARKER,
    CodecError,
    ContainerBlock,
    LedgerLineItem,
    SingleObjectCodec,
    decode_bodies,
)
from onceflow.streams.kafka import (
    DeadLetterRouter,
    EventProducer,
    RecordGate,
    consumer_lag,
    log_consume_error,
    make_consumer,
    partition_count,
    positions_past,
    type_fingerprints,
    watermarks,
)
from onceflow.streams.log import get_logger
from onceflow.streams.metrics import active_sensor
from onceflow.streams.runtime.batched import next_batch
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from onceflow.billing.settings import BillingRoleSettings

__all__ = ["ROW_GROUP_ROWS", "LedgerSink", "breaks_contract", "line_item_batch"]

_ARROW_TYPES = {"BIGINT": pa.int64(), "BOOLEAN": pa.bool_()}
_SCHEMA = pa.schema(
    [(n, _ARROW_TYPES.get(t, pa.string())) for n, t in LEDGER_COLUMNS.items()]
    + [("_partition", pa.int32()), ("_offset", pa.int64())])
_MONEY = [n for n, t in LEDGER_COLUMNS.items() if t.startswith("DECIMAL")]

#: DuckDB's row group. An insert of whole row groups is compressed and written
#: to the database file once, as it is inserted ("optimistic write"); rows that
#: part-fill a row group go through the write-ahead log first and are written
#: again at the next checkpoint, which costs a file database several times
#: more per line item (the views figures in bench/results.json).
ROW_GROUP_ROWS = 122_880


def line_item_batch(records: list[dict[str, Any]]) -> pa.Table:
    """Decoded line-item records (plus `_partition`, `_offset`) as one Arrow batch.

    Amounts stay decimal strings here; the insert casts them to DECIMAL(38, 6).
    """
    # Arrow's own row reader: about four times faster than building columns in Python.
    return pa.Table.from_pylist(records, schema=_SCHEMA)


class _Decoded:
    """Line items decoded and not yet handed to the inserter, with the read
    positions after them; handed over in whole row groups while catching up."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.advanced: dict[int, int] = {}

    def add(self, tables: list[pa.Table], advanced: dict[int, int]) -> None:
        self.tables.extend(tables)
        self.advanced.update(advanced)

    def take(self, row_group: int | None) -> tuple[list[pa.Table], dict[int, int]] | None:
        """Everything (`row_group` None), or the whole row groups read so far.

        Rows are cut in read order, so what stays behind is, per partition,
        a tail of what was read: the offsets committed with the rows taken
        are each partition's first offset left behind (or the read position).
        """
        if not self.advanced:
            return None
        tables, advanced = self.tables, self.advanced
        schema = tables[0].schema if tables else None
        if row_group is not None and all(t.schema.equals(schema) for t in tables):
            rows = sum(t.num_rows for t in tables)
            whole = rows // row_group * row_group
            if whole == 0:
                return None
            if whole < rows:
                table = pa.concat_tables(tables)
                rest = table.slice(whole)
                offsets = dict(advanced)
                firsts = rest.group_by("_partition").aggregate([("_offset", "min")])
                offsets.update(zip(firsts["_partition"].to_pylist(),
                                   firsts["_offset_min"].to_pylist(), strict=True))
                self.tables = [rest]  # self.advanced stays: the rest commits it
                return [table.slice(0, whole)], offsets
        # everything: when asked, when it is whole row groups, or when a slow-decoded
        # part (another schema) is among it, which is not cut
        self.tables, self.advanced = [], {}
        return tables, advanced


#: the line item's closed vocabularies (its `Literal` fields), from the model itself
_VOCABULARIES: dict[str, pa.Array] = {
    name: pa.array(sorted(get_args(field.annotation)))
    for name, field in LedgerLineItem.model_fields.items()
    if get_origin(field.annotation) is Literal}


def breaks_contract(table: pa.Table) -> bool:
    """Whether a fast-decoded batch holds what no valid line item has: a negative amount
    (decimal strings) or count, or a value outside one of its closed vocabularies (a
    `line_item_type` no ledger writes). Such a batch is decoded again record by record,
    which dead-letters the bad ones as every other reader does."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        allowed = _VOCABULARIES.get(name)
        if allowed is not None:
            if not pc.all(pc.is_in(column.cast(pa.string()), value_set=allowed)).as_py():
                return True
        elif name.endswith(("_usd", "_seconds", "_per_1k")):
            if pc.any(pc.starts_with(column.cast(pa.string()), "-")).as_py():
                return True
        elif pa.types.is_integer(column.type) and pc.any(pc.less(column, 0)).as_py():
            return True
    return False


class LedgerSink:
    name = "views-sink"

    def __init__(self, engine: ViewEngine, settings: BillingRoleSettings, *,
                 batch_size: int = 50_000, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.engine = engine
        self.settings = settings
        self.topic = TopicCatalog(settings)["ledger"].name
        self.batch_size = batch_size
        self.row_group_rows = row_group_rows  # the engine's; smaller only in tests
        self.codec = SingleObjectCodec()
        entry = self.codec.registry.for_type("ledger.line_item")
        self._ledger_header = SINGLE_OBJECT_MARKER + entry.fingerprint
        self._block = ContainerBlock(entry.schema)
        self._gate = RecordGate.for_topics(settings, [self.topic])
        #: known fingerprints of the other events on the ledger topic (holds, settlements)
        self._others = type_fingerprints(
            self.codec, frozenset(self.codec.registry.by_type) - {"ledger.line_item"}) or frozenset()
        self.log = get_logger(processor=self.name)
        self.ingested = 0
        self.read = 0
        self.caught_up = threading.Event()
        self._dlq: DeadLetterRouter | None = None
        self._dlq_lock = threading.Lock()
        self.sensor = active_sensor()
        self._last_report = 0.0

    def _dead_letter(self, msg: Message, exc: Exception) -> None:
        with self._dlq_lock:  # the reader and the inserter both dead-letter
            if self._dlq is None:
                producer = EventProducer(self.settings, self.codec)
                self._dlq = DeadLetterRouter(
                    producer, TopicCatalog(self.settings)["deadletters"].name, self.name)
            dlq = self._dlq
        self.log.warning("record.dead_lettered", offset=msg.offset(), error=str(exc)[:200])
        dlq.route(msg, exc)
        if self.sensor is not None:
            self.sensor.on_dead_letter(self.name, self.topic, str(exc))

    def _row(self, msg: Message) -> dict[str, Any] | None:
        """One record decoded on its own: the slow path, and the one that finds bad records
        (its contract checked as every other reader checks it)."""
        raw = msg.value() or b""
        try:
            self.codec.decode(raw)
            event_type, record = self.codec.decode_record(raw)
        except CodecError as exc:
            self._dead_letter(msg, exc)
            return None
        if event_type != "ledger.line_item":
            return None
        record["_partition"] = msg.partition()
        record["_offset"] = msg.offset()
        return record

    def _decode(self, msgs: list[Message], advanced: dict[int, int]) -> list[pa.Table]:
        """The line items among `msgs` as Arrow tables, fast-decoded when they can be;
        `advanced` gets the offset after the last record read in each partition."""
        bodies: list[bytes] = []
        parts: list[int] = []
        offsets: list[int] = []
        slow: list[dict[str, Any]] = []
        header, others, marker = self._ledger_header, self._others, SINGLE_OBJECT_MARKER
        for msg in msgs:
            if msg.error() is not None:
                log_consume_error(msg, self.log)
                continue
            p, o = msg.partition(), msg.offset()
            advanced[p] = o + 1  # type: ignore[index, operator]
            raw = msg.value()
            if raw is None:
                continue  # a tombstone: not an event
            oversized = self._gate.before(raw)
            if oversized is not None:
                self._dead_letter(msg, oversized)
                continue
            if raw.startswith(header):
                bodies.append(raw[10:])
                parts.append(p)  # type: ignore[arg-type]
                offsets.append(o)  # type: ignore[arg-type]
            elif raw[2:10] not in others or raw[:2] != marker:
                row = self._row(msg)  # an older line item, or not ours: dead-lettered
                if row is not None:
                    slow.append(row)
            # else: a hold or a settlement, which views do not show
        self.read += len(msgs)
        tables: list[pa.Table] = []
        if bodies:
            try:
                fast = decode_bodies(self._block, bodies)  # amounts: cast by the insert
                if breaks_contract(fast):  # the slow path says which record, and why
                    raise ValueError("a line item that breaks its contract")
            except ValueError:  # find the bad one(s): decode the line items one by one
                rows = (self._row(m) for m in msgs
                        if m.error() is None and (m.value() or b"").startswith(header))
                slow.extend(r for r in rows if r is not None)
            else:
                tables.append(fast.append_column("_partition", pa.array(parts, pa.int32()))
                              .append_column("_offset", pa.array(offsets, pa.int64())))
        if slow:
            tables.append(line_item_batch(slow))
        return tables

    def _ingest(self, tables: list[pa.Table], advanced: dict[int, int]) -> int:
        try:
            return self.engine.ingest(tables, self.topic, advanced)
        except duckdb.ConversionException:
            pass  # an amount that is not a decimal: find it, dead-letter it, keep the rest
        good = []
        for row in (r for t in tables for r in t.to_pylist()):
            try:
                for name in _MONEY:
                    Decimal(row[name])
                good.append(row)
            except (InvalidOperation, KeyError, TypeError) as exc:
                self._dead_letter_row(row, exc)
        if self._dlq is not None:
            self._dlq.producer.flush()
        return self.engine.ingest(line_item_batch(good), self.topic, advanced)

    def _dead_letter_row(self, row: dict[str, Any], exc: Exception) -> None:
        """A decoded record the database refused: re-read its raw record to dead-letter it."""
        consumer = make_consumer(self.settings, None)
        try:
            tp = TopicPartition(self.topic, row["_partition"], row["_offset"])
            consumer.assign([tp])
            msgs = consumer.consume(1, timeout=10)
            if msgs and msgs[0].error() is None:
                self._dead_letter(msgs[0], exc)
        finally:
            consumer.close()

    def run(self, stop: threading.Event) -> None:
        """Read and decode here; insert on a second thread, one batch behind.

        Decoding (Python and polars) and inserting (DuckDB, which lets go of
        the GIL) overlap. Rows are inserted in the order read, each insert with
        the offsets after its rows, so the sink stays exactly-once; at most one
        decoded group waits. Catching up, inserts are whole DuckDB row groups
        (`ROW_GROUP_ROWS`): the cheapest way into a database file.
        """
        # Nobody waits on the views by the millisecond: ask the broker less often.
        # Catching up, a batch is tens of thousands of line items: fetch them in
        # few large responses rather than many of the 1 MB default.
        consumer = make_consumer(self.settings, None, **{
            "enable.partition.eof": False, "max.partition.fetch.bytes": 16 << 20,
            **self.settings.background_consumer()})
        work: queue.Queue[tuple[list[pa.Table], dict[int, int]] | None] = queue.Queue(1)
        failed: list[BaseException] = []
        inserter: threading.Thread | None = None
        try:
            parts = partition_count(consumer, self.topic)
            start = self.engine.offsets(self.topic)
            consumer.assign([TopicPartition(self.topic, p, start.get(p, OFFSET_BEGINNING))
                             for p in range(parts)])
            ends = {p: watermarks(consumer, self.topic, p)[1] for p in range(parts)}
            position = {p: start.get(p, 0) for p in range(parts)}
            self.log.info("sink.started", topic=self.topic, offsets=start)
            self._check_caught_up(position, ends)
            inserter = threading.Thread(target=self._insert_loop,
                                        args=(work, position, ends, failed),
                                        name="views-insert", daemon=True)
            inserter.start()
            decoded = _Decoded()
            read_to = {(self.topic, p): o for p, o in position.items()}
            probed = 0.0

            def hand_over(item: tuple[list[pa.Table], dict[int, int]] | None) -> None:
                while item is not None and not failed:
                    try:
                        work.put(item, timeout=0.5)
                        return
                    except queue.Full:
                        continue

            while not stop.is_set() and not failed:
                msgs = next_batch(consumer, self.batch_size,
                                  self.settings.batch_timeout_ms / 1000)
                began = time.perf_counter()
                advanced: dict[int, int] = {}
                decoded.add(self._decode(msgs, advanced), advanced)
                read_to.update(((self.topic, p), o) for p, o in advanced.items())
                if not msgs and time.monotonic() - probed >= 0.5:
                    # idle: past a transaction's commit marker, the offsets move on
                    # with no row (they commit alone)
                    probed = time.monotonic()
                    past = positions_past(consumer, read_to)
                    read_to.update(past)
                    decoded.add([], {p: o for (_, p), o in past.items()})
                if self.sensor is not None:
                    self._report(consumer, len(msgs), time.perf_counter() - began)
                # Thousands of records ready at once mean the sink is behind: keep
                # gathering whole row groups. A small read means caught up (asking
                # the high watermarks after every batch would cost a request per
                # partition): insert what there is now.
                behind = len(msgs) >= self.batch_size // 8
                hand_over(decoded.take(self.row_group_rows if behind else None))
            hand_over(decoded.take(None))
        finally:
            if inserter is not None:
                work.put(None)  # after whatever is queued: nothing read is dropped
                inserter.join()
            consumer.close()
        if failed:
            raise failed[0]

    def _report(self, consumer: Consumer, records: int, seconds: float) -> None:
        """Records read and decode time per batch; lag and the database's size every
        `metrics_interval_ms` (the views write no facts)."""
        assert self.sensor is not None
        if records:
            self.sensor.on_batch(self.name, records, 0, seconds)
        now = time.monotonic()
        if (now - self._last_report) * 1000 >= self.settings.metrics_interval_ms:
            self._last_report = now
            size = {0: os.path.getsize(self.engine.path)} \
                if os.path.isfile(self.engine.path) else {}
            self.sensor.on_partitions(self.name, consumer_lag(consumer), size)

    def _insert_loop(self, work: queue.Queue[tuple[list[pa.Table], dict[int, int]] | None],
                     position: dict[int, int], ends: dict[int, int],
                     failed: list[BaseException]) -> None:
        while (item := work.get()) is not None:
            if failed:
                continue  # drain: the reader stops at its next batch
            tables, advanced = item
            try:
                with self._dlq_lock:
                    if self._dlq is not None:
                        self._dlq.producer.flush()  # dead letters out before the offsets
                self.ingested += self._ingest(tables, advanced)
            except BaseException as exc:
                self.log.exception("sink.insert_failed")
                failed.append(exc)
                continue
            position.update(advanced)
            self._check_caught_up(position, ends)

    def _check_caught_up(self, position: dict[int, int], ends: dict[int, int]) -> None:
        if not self.caught_up.is_set() and all(position[p] >= ends[p] for p in ends):
            self.caught_up.set()
            self.log.info("sink.caught_up", line_items=self.ingested)

    def close(self) -> None:
        if self._dlq is not None:
            self._dlq.producer.flush()
            self._dlq = None
