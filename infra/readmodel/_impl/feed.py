"""The read model's shell: every partition of the topics it reads, folded into RocksDB with
the offsets each checkpoint reflects.

Like the ledger sink (and a Kafka Streams global table), each views replica
keeps a whole copy: it assigns itself every partition at the offsets its own
store holds, so any replica answers any read. A batch's rows and the offsets
after it are one RocksDB write batch, so a crash leaves the model wholly before
or after a batch and it resumes exactly there (exactly once, with no dedupe
marks). A store that is lost, or kept in another layout, is rebuilt from the
start of every topic. Readers get a snapshot of the last checkpoint; `wait_for`
lets a request wait until the model has folded what its caller wrote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from onceflow.infra.readmodel._impl.fold import ReadModelFold, key
from onceflow.infra.readmodel._impl.reader import ReadModelReader
from onceflow.schemas import CodecError, SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import consumer_lag, make_consumer, partition_count, watermarks
from onceflow.streams.log import get_logger
from onceflow.streams.state.rocksdb import open_partition_store
from onceflow.streams.topics import TopicRole
from onceflow.streams.topics.catalog import TopicCatalog

__all__ = ["LAYOUT", "READ_TOPICS", "ReadModelFeed", "ReadModelLagging", "position_header"]

#: the topics the read model folds
READ_TOPICS: tuple[TopicRole, ...] = ("workunits", "flow", "ledger", "wallets", "nodes",
                                      "trust", "capacity")
#: the rows' layout: a store written in another is rebuilt from the log
LAYOUT = "readmodel-1"
_BATCH = 5000


class ReadModelLagging(TimeoutError):
    """The read model had not folded what the caller waits for within the time given."""


class ReadModelFeed:
    """One replica's read model: `start` it, ask `reader()`, `wait_for` a write, `close`."""

    def __init__(self, settings: OnceflowSettings, state_dir: Path | None = None) -> None:
        from onceflow.streams.limits import Limiter

        self.settings = settings
        self.log = get_logger(processor="readmodel")
        self.catalog = TopicCatalog(settings)
        self.fold = ReadModelFold(Limiter.from_settings(settings))
        self.codec = SingleObjectCodec()
        root = Path(state_dir or settings.member_state_dir())
        self.store = open_partition_store(root, "readmodel", 0, layout=LAYOUT)
        if self.store.outdated:
            self.log.info("readmodel.rebuild", reason="kept in another layout")
            self.store.close()
            self.store = open_partition_store(root, "readmodel", 0, wipe=True, layout=LAYOUT)
        self.consumer = make_consumer(settings, None, **{"enable.partition.eof": True,
                                                         **settings.background_consumer()})
        names = [self.catalog[t].name for t in READ_TOPICS]
        self._role_of: dict[str, TopicRole] = {self.catalog[t].name: t for t in READ_TOPICS}
        self.partitions = [(t, p) for t in names
                           for p in range(partition_count(self.consumer, t))]
        stored = self.store.snapshot()
        self._next = {(t, p): int(stored.get(key("pos", t, str(p)), 0)) for t, p in self.partitions}
        self.consumer.assign([TopicPartition(t, p, n or OFFSET_BEGINNING)
                              for (t, p), n in self._next.items()])
        #: where each partition ended when the feed started: reached, it has caught up
        self._targets = {(t, p): watermarks(self.consumer, t, p)[1] for t, p in self.partitions}
        self.caught_up = threading.Event()
        self._changed = threading.Condition()
        self._reader = ReadModelReader(self.store.snapshot(), self.fold.limiter, self.codec)
        self.version = 0
        self.folded = 0
        self._lag = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readmodel", daemon=True)
        #: asks the log's end for readers that wait for their writes (not the feed's own
        #: consumer: a consumer is not to be called from two threads)
        self._probe: Any = None
        self._probe_lock = threading.Lock()

    # -- the shell -------------------------------------------------------------------------

    def start(self) -> ReadModelFeed:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self.consumer.close()
        if self._probe is not None:
            self._probe.close()
        # A snapshot keeps the database open: drop the last one before closing it.
        with self._changed:
            self._reader = None  # type: ignore[assignment]
        import gc

        gc.collect()
        self.store.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step(0.2)
        except Exception:
            self.log.exception("readmodel.failed")
            raise

    def step(self, timeout: float) -> int:
        """Fold one batch and checkpoint it; how many records it held."""
        msgs = self.consumer.consume(num_messages=_BATCH, timeout=timeout)
        folded = 0
        for msg in msgs:
            err = msg.error()
            tp = (str(msg.topic()), msg.partition() or 0)
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._next[tp] = max(self._next[tp], msg.offset() or 0)
                continue
            offset = msg.offset() or 0
            raw = msg.value()
            self._next[tp] = offset + 1
            if raw is None:
                continue
            try:
                event = self.codec.decode(raw)
            except CodecError:
                continue  # the roles dead-letter what does not decode
            self.fold.apply(self.store, self._role_of[tp[0]], event, raw, (tp[1], offset))
            folded += 1
        if msgs:
            for (t, p), n in self._next.items():
                self.store.set(key("pos", t, str(p)), n)
            self.store.checkpoint()
            self.folded += folded
            with self._changed:
                self.version += 1
                self._reader = ReadModelReader(self.store.snapshot(), self.fold.limiter,
                                               self.codec)
                self._changed.notify_all()
        self._lag = sum(consumer_lag(self.consumer).values())
        if not self.caught_up.is_set() and all(
                self._next[tp] >= high for tp, high in self._targets.items()):
            self.caught_up.set()
            self.log.info("readmodel.caught_up", folded=self.folded)
        return folded

    # -- for readers -----------------------------------------------------------------------

    def reader(self) -> ReadModelReader:
        """The model as of its last checkpoint (one snapshot: a consistent answer)."""
        with self._changed:
            return self._reader

    def wait_for(self, ready: Callable[[ReadModelReader], Any], timeout: float,
                 what: str) -> Any:
        """Wait until `ready(reader)` answers something truthy (and return it): until the
        model has folded a write its caller made. `ReadModelLagging` says it has not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = ready(self._reader)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadModelLagging(
                        f"the read model has not folded {what} within {timeout:g} s "
                        f"({self.lag()} records behind the log): is the role that writes "
                        "it running? Read again later, or wait longer")
                self._changed.wait(min(left, 1.0))

    def wait_for_log_end(self, roles: tuple[TopicRole, ...], timeout: float, what: str
                         ) -> None:
        """Wait until the model has folded everything `roles`' partitions hold now: what a
        write caused is all there (a role writes a batch's facts in one request, so once
        one of them is seen, the log's end is past the rest)."""
        names = {self.catalog[r].name for r in roles}
        with self._probe_lock:
            if self._probe is None:
                self._probe = make_consumer(self.settings, None)
            targets = {f"{t}:{p}": watermarks(self._probe, t, p)[1]
                       for t, p in self.partitions if t in names}
        self.wait_for(lambda r: all(r.position().get(tp, 0) >= high
                                    for tp, high in targets.items()), timeout, what)

    def wait_version(self, newer_than: int, timeout: float) -> int:
        """The model's version once it is above `newer_than` (or at the timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.version <= newer_than:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self.version

    def lag(self) -> int:
        """Records the model was behind the log after its last batch, from the watermarks
        its fetches brought (-1: not known yet). Measured by the feed's own thread: a
        consumer is not to be called from two threads."""
        return self._lag

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "folded": self.folded, "lag": self.lag(),
                "caught_up": self.caught_up.is_set(),
                "position": {f"{t}:{p}": n for (t, p), n in sorted(self._next.items())}}


def position_header(reader: ReadModelReader) -> str:
    """A response's `X-Onceflow-Position`: the offsets its answer reflects."""
    return ",".join(f"{k}={v}" for k, v in sorted(reader.position().items()))



