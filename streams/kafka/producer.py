"""The one producer every onceflow process uses.

Idempotent, `acks=all`, and loud: a delivery error is collected by the
delivery callback and raised from the next `flush()`, so a caller that
flushes before committing its input can never commit past a lost output.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from onceflow.schemas import Event, EventCodec
from onceflow.streams.topics.catalog import Topic, partition_for

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["DeliveryError", "EventProducer", "Headers", "TransactionFailed"]

Headers = Sequence[tuple[str, bytes]]

_EVENT_ID: Callable[[Event], str] = operator.attrgetter("event_id")


class DeliveryError(RuntimeError):
    """One or more records could not be delivered; nothing after them may be committed."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        first = "; ".join(f"{topic}: {err}" for topic, err in errors[:3])
        super().__init__(f"{len(errors)} record(s) not delivered: {first}")


class TransactionFailed(RuntimeError):
    """A transaction could not commit and was aborted (or the producer was fenced):
    nothing sent in it is visible, and the sender must drop what it decided in it.

    `fenced`: the producer itself is dead (a newer one took its transactional id,
    or the coordinator aborted its transaction): a new producer is needed.
    """

    def __init__(self, reason: str, *, fenced: bool) -> None:
        super().__init__(reason)
        self.fenced = fenced


class EventProducer:
    def __init__(
        self,
        settings: StreamsSettings,
        codec: EventCodec,
        *,
        on_delivered: Callable[[Message], None] | None = None,
        transactional_id: str | None = None,
        **overrides: Any,  # librdkafka properties, e.g. **{"linger.ms": 1}
    ) -> None:
        self.settings = settings
        self.codec = codec
        if transactional_id is not None:
            overrides = {**settings.transactional_config(transactional_id), **overrides}
        # One delivery callback for the producer rather than one per record:
        # a record then carries no callback reference of its own.
        self._producer = Producer({**settings.producer_config(**overrides),
                                   "on_delivery": self._delivery})
        self.transactional = transactional_id is not None
        #: a transaction is open (begun, not yet committed or aborted)
        self.in_transaction = False
        self._initialised = False
        #: a call into librdkafka never returned: nothing more is asked of this producer
        self.abandoned = False
        self._errors: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._on_delivered = on_delivered
        self._partitions: dict[str, int] = {}

    # -- delivery ------------------------------------------------------------------

    def _delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._lock:
                self._errors.append((str(msg.topic()), str(err)))
            return
        if self._on_delivered is not None:
            self._on_delivered(msg)

    def partitions_of(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            md = self._producer.list_topics(topic, timeout=10)
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(
                    f"topic {topic!r} does not exist; run `onceflow topics create` first"
                )
            count = len(meta.partitions)
            self._partitions[topic] = count
        return count

    # -- sending -------------------------------------------------------------------

    def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        # librdkafka's typing wants str | bytes | None values: ours are bytes.
        sent: Any = None if not headers else (
            headers if isinstance(headers, list) else list(headers))
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key, headers=sent)
                else:
                    self._producer.produce(topic, value, key, partition, headers=sent)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)
            except KafkaException as exc:
                if not self.transactional:
                    raise
                # the transaction is in an error state (fenced, timed out): nothing of it
                # can be committed
                err = exc.args[0]
                raise TransactionFailed(str(err), fenced=err.fatal()) from exc

    def send(
        self,
        topic: Topic | str,
        event: Event,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Encode and send one event, keyed and partitioned by the catalog's rule."""
        self.send_encoded(topic, event, self.codec.encode(event), partition=partition,
                          headers=headers)

    def send_encoded(
        self,
        topic: Topic | str,
        event: Event,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        name = topic.name if isinstance(topic, Topic) else topic
        key = self.key_rule(topic)(event)
        if partition is None:
            if isinstance(topic, Topic) and topic.partition_by == "single":
                partition = 0
            else:
                partition = partition_for(event.entity_id(), self.partitions_of(name))
        self.send_raw(name, value, key=key, partition=partition, headers=headers)

    @staticmethod
    def key_rule(topic: Topic | str) -> Callable[[Event], str]:
        """The record key the catalog's rule gives an event on a topic: the event id,
        unless the topic is a table keyed by its entity. A caller sending many events
        to one topic looks the rule up once."""
        if isinstance(topic, Topic) and topic.key != "event_id":
            field = topic.key
            return lambda event: str(getattr(event, field, None) or event.entity_id())
        return _EVENT_ID

    # -- transactions --------------------------------------------------------------

    def _call(self, op: Callable[[], Any], attempts: int = 3) -> Any:
        """Run a transactional call, retrying what Kafka says may be retried; anything
        else is a `TransactionFailed`."""
        for attempt in range(attempts):
            try:
                return op()
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and attempt + 1 < attempts:
                    continue
                raise TransactionFailed(str(err), fenced=err.fatal()) from exc
        raise AssertionError("unreachable")

    def begin_transaction(self) -> None:
        """Open a transaction unless one is open: everything sent until the commit is
        visible all at once or never."""
        if not self._initialised:
            # Fences whatever producer had this id before (a restarted member's last
            # incarnation), aborting its open transaction. Done at the first transaction,
            # not when the producer is made: making one must not fence anybody.
            self._call(lambda: self._producer.init_transactions(10))
            self._initialised = True
        if not self.in_transaction:
            self._call(self._producer.begin_transaction, attempts=1)
            self.in_transaction = True

    def commit_transaction(self, offsets: list[TopicPartition] | None = None,
                           group_metadata: Any = None, timeout: float = 10.0) -> None:
        """Commit the open transaction with the consumer's `offsets` (the exactly-once v2
        pattern: the group's generation in `group_metadata` fences a member the group
        moved on from). On failure the transaction is aborted and `TransactionFailed`
        raised; a delivery error of a record sent in it fails it too. Each call waits at
        most `timeout` and is tried three times: a member that cannot commit for half a
        minute (its broker away) drops the batch and joins again rather than block, its
        partitions unserved, inside a rebalance callback."""
        if not self.in_transaction:
            return
        try:
            if offsets:
                self._call(lambda: self._bounded(
                    lambda: self._producer.send_offsets_to_transaction(
                        offsets, group_metadata, timeout), timeout + 5))
            self._call(lambda: self._producer.commit_transaction(timeout))
        except TransactionFailed as exc:
            if not self.abandoned:
                self.abort_transaction()
            raise exc
        finally:
            self.in_transaction = False
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:  # not reached in practice: a failed record fails the commit
            raise TransactionFailed(str(DeliveryError(errors)), fenced=False)

    def _bounded(self, call: Callable[[], Any], limit_s: float) -> Any:
        """`call` in a thread of its own, waited for at most `limit_s`.

        librdkafka's send_offsets_to_transaction can block past its own timeout
        when the group coordinator it cached went down (confluentinc/librdkafka
        #5456, open; seen here when the broker restarts mid-commit). The call
        cannot be interrupted, so this producer is abandoned to it: the caller
        drops the transaction and makes a new producer, whose init fences this
        one (or the coordinator aborts its transaction by its timeout).
        """
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(("ok", call()))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(("error", exc))

        worker = threading.Thread(target=run, daemon=True, name="txn-call")
        worker.start()
        worker.join(limit_s)
        if not outcome:
            self.abandoned = True
            raise TransactionFailed(
                f"a transactional call did not return in {limit_s:.0f} s (librdkafka "
                "#5456): this producer is abandoned", fenced=True)
        kind, value = outcome[0]
        if kind == "error":
            raise value
        return value

    def abort_transaction(self) -> None:
        """Abort the open transaction; a fenced producer cannot, and needs none."""
        was_open, self.in_transaction = self.in_transaction, False
        with self._lock:
            self._errors = []
        if not was_open or self.abandoned:
            return
        # fenced or fatal: the coordinator aborts it (or did)
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(10)

    def poll(self, timeout: float = 0.0) -> int:
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every record; raise `DeliveryError` if any was not delivered."""
        remaining = self._producer.flush(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise DeliveryError(errors)
        if remaining:
            raise DeliveryError([("*", f"{remaining} record(s) still queued after {timeout}s")])

    def __len__(self) -> int:
        return len(self._producer)
