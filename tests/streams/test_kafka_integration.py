"""Against the real embedded broker: topics, producer errors, dead letters, the batched shell."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from onceflow.schemas import SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.examples.submission_counter import SubmissionCounted, SubmissionCounter
from onceflow.streams.kafka import (
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PROCESSOR,
    DLQ_HEADER_TOPIC,
    DeliveryError,
    EventProducer,
    read_topic_to_end,
)
from onceflow.streams.runtime import BatchedProcessor, fingerprint_partitions, replay_facts
from onceflow.streams.topics import TopicCatalog, create_topics, describe_topics
from tests.fixtures import event_messages, running, submitted, wait_for

pytestmark = pytest.mark.integration


def test_topic_creation_is_idempotent_and_described(settings: OnceflowSettings) -> None:
    first = create_topics(settings)
    assert all(s.created for s in first)
    second = create_topics(settings)
    assert all(s.exists and not s.created and s.error is None for s in second)
    described = {s.name: s for s in describe_topics(settings)}
    nodes = described[TopicCatalog(settings)["nodes"].name]
    assert nodes.partitions == 3
    assert nodes.configs.get("cleanup.policy") == "compact"


def test_delivery_errors_are_raised_not_dropped(settings: OnceflowSettings) -> None:
    create_topics(settings)
    producer = EventProducer(settings, SingleObjectCodec(), **{"message.timeout.ms": 2000})
    producer.send_raw(TopicCatalog(settings)["submissions"].name, b"x", partition=99)
    with pytest.raises(DeliveryError):
        producer.flush(10)


@contextmanager
def _running_counter(settings: OnceflowSettings, uid: str,
                     counter: SubmissionCounter | None = None) -> Iterator[BatchedProcessor]:
    """The example counter over submissions -> workunits, run in a thread for the block."""
    catalog = TopicCatalog(settings)
    processor = BatchedProcessor(counter or SubmissionCounter(), settings,
                                 inputs=[catalog["submissions"].name],
                                 fact_topic=catalog["workunits"].name, group_id=f"g-{uid}")
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield processor
    finally:
        stop.set()
        thread.join(30)


def test_random_bytes_go_to_dead_letters_and_processing_continues(
    settings: OnceflowSettings, uid: str
) -> None:
    create_topics(settings)
    catalog = TopicCatalog(settings)
    inp, facts, dlq = catalog["submissions"].name, catalog["workunits"].name, catalog["deadletters"].name
    producer = EventProducer(settings, SingleObjectCodec())
    with _running_counter(settings, uid):
        for i in range(20):
            producer.send(catalog["submissions"], submitted(i))
        garbage = [os.urandom(64) for _ in range(3)]
        for g in garbage:
            producer.send_raw(inp, g, key=b"junk", partition=1)
        for i in range(20, 40):
            producer.send(catalog["submissions"], submitted(i))
        producer.flush()
        wait_for(lambda: len(event_messages(settings, facts)) >= 40, what="40 facts")
        dead = wait_for(lambda: list(read_topic_to_end(settings, dlq)) or None, what="dead letters")
        assert sorted(m.value() for m in dead) == sorted(garbage)
        for m in dead:
            headers = dict(m.headers())
            assert headers[DLQ_HEADER_TOPIC].decode() == inp
            assert headers[DLQ_HEADER_PROCESSOR].decode() == SubmissionCounter.name
            assert int(headers[DLQ_HEADER_OFFSET]) >= 0
            assert m.key() == b"junk"
    assert len({m.key() for m in event_messages(settings, facts)}) == 40


class _PickyCounter(SubmissionCounter):
    """The counter, declaring the one type it acts on."""

    accepts = frozenset({"workunit.submitted"})

    def decide(self, state, event):  # type: ignore[no-untyped-def]
        assert event.event_type == "workunit.submitted", "other types are skipped undecoded"
        return super().decide(state, event)


def test_types_a_reducer_ignores_are_skipped_and_garbage_still_dead_lettered(
    settings: OnceflowSettings, uid: str
) -> None:
    """On a topic that carries many types (reports), a type the reducer does not act on is
    skipped undecoded; on one that declares what it carries (submissions), any other type
    was sent to the wrong topic and is dead-lettered saying so, as garbage is."""
    from onceflow.schemas import ClockTick, NodeHeartbeat
    from onceflow.streams.kafka import dead_letter_from_message

    create_topics(settings)
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    for i in range(10):
        producer.send(catalog["submissions"], submitted(i))
        producer.send(catalog["reports"], ClockTick(event_id=f"t{i}", occurred_at=i,
                                                    partition=0), partition=0)
    producer.send(catalog["submissions"], NodeHeartbeat(event_id="hb", occurred_at=1,
                                                        node_id="n1"), partition=0)
    producer.send_raw(catalog["submissions"].name, b"\xc3\x01garbage!", key=b"j", partition=0)
    producer.flush()
    processor = BatchedProcessor(_PickyCounter(), settings,
                                 inputs=[catalog["submissions"].name, catalog["reports"].name],
                                 fact_topic=catalog["workunits"].name, group_id=f"g-{uid}")
    with running(processor):
        wait_for(lambda: processor.processed >= 22, what="22 records processed")
    assert len(event_messages(settings, catalog["workunits"].name)) == 10
    dead = [dead_letter_from_message(m)
            for m in read_topic_to_end(settings, catalog["deadletters"].name)]
    assert sorted(d.error_type for d in dead) == ["UnknownSchemaError", "WrongTopic"]
    wrong = next(d for d in dead if d.error_type == "WrongTopic")
    assert "node.heartbeat does not belong on" in wrong.error and "workunit.submitted" in \
        wrong.error


def test_inputs_redelivered_emit_nothing_twice(settings: OnceflowSettings, uid: str) -> None:
    """The same events produced twice (a client retry) give one fact each."""
    create_topics(settings)
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    for _ in range(2):
        for i in range(30):
            producer.send(catalog["submissions"], submitted(i))
    producer.flush()
    with _running_counter(settings, uid) as processor:
        wait_for(lambda: processor.processed >= 60, what="60 inputs processed")
    facts = event_messages(settings, catalog["workunits"].name)
    assert len(facts) == 30
    codec = SingleObjectCodec()
    assert all(isinstance(codec.decode(m.value()), SubmissionCounted) for m in facts)


class _Parts:
    """A sensor that keeps each checkpointed part of a batch: (records, seconds)."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, float]] = []

    def on_batch(self, processor: str, records: int, facts: int, seconds: float) -> None:
        self.parts.append((records, seconds))

    def on_dead_letter(self, processor: str, topic: str, error: str) -> None: ...

    def on_facts(self, processor: str, facts: object) -> None: ...

    def on_partitions(self, processor: str, lag: object, state_bytes: object) -> None: ...

    def on_restore(self, processor: str, partition: int, facts: int, seconds: float) -> None:
        ...

    def on_fenced(self, processor: str, reason: str) -> None: ...


class _SlowCounter(SubmissionCounter):
    """The counter, computing for 10 ms per decision (a reducer with real work to do)."""

    def decide(self, state, event):  # type: ignore[no-untyped-def]
        import time

        done = time.perf_counter() + 0.01
        while time.perf_counter() < done:  # the decision's own computing
            pass
        return super().decide(state, event)


def test_a_long_batch_is_committed_in_parts_under_transactions(
        settings: OnceflowSettings, uid: str) -> None:
    """Nothing a transaction holds is visible before its commit, so a batch that takes
    long is committed every `transaction_max_ms` (the first decisions reach their
    readers while the rest are made), not once at its end."""
    settings = settings.model_copy(update={"transactions": True, "transaction_max_ms": 100})
    create_topics(settings)
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    for i in range(150):  # all there before the shell starts: a batch of 150 (1.5 s)
        producer.send(catalog["submissions"], submitted(i))
    producer.flush()
    sensor = _Parts()
    processor = BatchedProcessor(_SlowCounter(), settings, inputs=[catalog["submissions"].name],
                                 fact_topic=catalog["workunits"].name, group_id=f"g-{uid}",
                                 sensor=sensor)
    with running(processor):
        wait_for(lambda: processor.processed >= 150, what="150 inputs processed")
    decided = [(n, s) for n, s in sensor.parts if n]
    assert sum(n for n, _ in decided) == 150
    assert len(decided) >= 5, decided
    # each part stops at the first decision past the bound: 10 of 10 ms, and that one
    assert all(n <= 11 for n, _ in decided), decided
    assert len(event_messages(settings, catalog["workunits"].name)) == 150


def test_state_of_a_log_that_no_longer_exists_is_discarded(settings: OnceflowSettings,
                                                            uid: str) -> None:
    """A restarted embedded broker starts with empty topics; the local state of the old
    log (offsets beyond the new end, dedupe marks) must not swallow the new inputs."""
    def run_once(s: OnceflowSettings) -> int:
        create_topics(s)
        catalog = TopicCatalog(s)
        producer = EventProducer(s, SingleObjectCodec())
        for i in range(30):
            producer.send(catalog["submissions"], submitted(i))
        producer.flush()
        with _running_counter(s, uid) as processor:
            wait_for(lambda: processor.processed >= 30, what="30 inputs processed")
        return len(event_messages(s, catalog["workunits"].name))

    assert run_once(settings) == 30
    # the same state directory over new, empty topics: the same events are new facts
    assert run_once(settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}b."})
                    ) == 30


def test_replay_of_facts_equals_live_state(settings: OnceflowSettings, uid: str,
                                           tmp_path: Path) -> None:
    create_topics(settings)
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    for i in range(300):
        producer.send(catalog["submissions"], submitted(i, unit=f"wu-{i % 50}"))
    producer.flush()
    with _running_counter(settings, uid) as processor:
        wait_for(lambda: processor.processed >= 300, what="300 inputs processed")
        live = processor.fingerprint()
    replayed = replay_facts(SubmissionCounter(), settings, catalog["workunits"].name,
                            SingleObjectCodec())
    assert fingerprint_partitions({p: list(s.raw_items()) for p, s in replayed.items()}) == live


def test_reading_a_partition_from_its_end_returns_at_once(settings: OnceflowSettings) -> None:
    # A restart with its state intact recovers from the checkpointed offset,
    # which is often the end: nothing is read and there is no position yet.
    from onceflow.streams.kafka import read_partition_to_end

    create_topics(settings)
    topic = TopicCatalog(settings)["workunits"]
    producer = EventProducer(settings, SingleObjectCodec())
    for i in range(5):
        producer.send(topic, submitted(i), partition=0)
    producer.flush()
    everything = list(read_partition_to_end(settings, topic.name, 0, timeout_s=30))
    assert len(everything) == 5
    end = max(m.offset() or 0 for m in everything) + 1
    assert list(read_partition_to_end(settings, topic.name, 0, end, timeout_s=30)) == []
