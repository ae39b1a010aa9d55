"""A decision half-written before a crash, made again after it.

The batched shell finds the written part of a decision in its fact topic (a
held group) and re-decides the input. When the new decision repeats the
written facts, only the rest is sent. When it differs, because the reducer
read something outside the partition's log, the written part stands and a
`DecisionClosed` fact ends it: no fact id twice, and the live state equals
a replay of the topic.

Only flush checkpoints can leave half a decision in the log; under
transactions the written part was never committed, so readers never see it
and the input is simply decided again (the last test).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from onceflow.schemas import DecisionClosed, Event, SingleObjectCodec, WorkUnitSubmitted
from onceflow.settings import OnceflowSettings
from onceflow.streams.examples.submission_counter import SubmissionCounted
from onceflow.streams.ids import derive_event_id
from onceflow.streams.kafka import EventProducer
from onceflow.streams.runtime import BatchedProcessor, fingerprint_items, replay_facts
from onceflow.streams.runtime.facts import fact_headers
from onceflow.streams.state import MemoryState, open_partition_store
from onceflow.streams.topics import TopicCatalog, create_topics
from onceflow.streams.topics.catalog import partition_for
from onceflow.streams.types import Reducer, State
from tests.fixtures import events, running, submitted, wait_for

pytestmark = [pytest.mark.integration]


class _Placing(Reducer):
    """Three facts per submission, whose content follows `table`: a value that is not
    in the partition's log, as the scheduler's view of node heartbeats is not."""

    name = "test-placing"

    def __init__(self, table: int) -> None:
        self.table = table

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if not isinstance(event, WorkUnitSubmitted):
            return ()
        return tuple(
            SubmissionCounted(
                event_id=derive_event_id(event.event_id, f"placed-{k}"),
                occurred_at=event.occurred_at, tenant_id=event.tenant_id,
                work_unit_id=event.work_unit_id, causation_id=event.event_id,
                count=self.table, last_work_unit_id=f"{event.work_unit_id}/{k}")
            for k in range(3))

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, SubmissionCounted):
            state.set(f"placed:{fact.last_work_unit_id}", {"table": fact.count})


def _half_written_then_restarted(settings: OnceflowSettings, tmp_path: Path,
                                 uid: str, table_after: int) -> tuple[list[Event], int]:
    """The first two of three facts for one input in the log (made with table 1), its
    input not yet committed; then a processor with `table_after` runs over it and over
    a second input (flush checkpoints). Returns the fact topic's events and the input's
    partition."""
    settings = settings.model_copy(update={"transactions": False})
    create_topics(settings)
    catalog = TopicCatalog(settings)
    first, second = submitted(0, unit="wu-a"), submitted(1, unit="wu-a")  # one partition
    partition = partition_for("wu-a", settings.partitions)
    producer = EventProducer(settings, SingleObjectCodec())
    for i, fact in enumerate(_Placing(1).decide(MemoryState(), first)[:2], start=1):
        producer.send(catalog["workunits"], fact, partition=partition,
                      headers=fact_headers(first.event_id, i, 3))
    producer.send(catalog["submissions"], first)
    producer.send(catalog["submissions"], second)
    producer.flush()
    processor = BatchedProcessor(_Placing(table_after), settings,
                                 inputs=[catalog["submissions"].name],
                                 fact_topic=catalog["workunits"].name,
                                 group_id=f"g-{uid}", state_dir=tmp_path / "placing")
    with running(processor):
        wait_for(lambda: processor.processed >= 2, what="both inputs processed")
    return events(settings, catalog["workunits"].name), partition


def _live_equals_replay(settings: OnceflowSettings, tmp_path: Path, partition: int) -> None:
    store = open_partition_store(tmp_path / "placing", _Placing.name, partition)
    live = fingerprint_items(list(store.raw_items()))
    store.close()
    replayed = replay_facts(_Placing(0), settings, TopicCatalog(settings)["workunits"].name,
                            SingleObjectCodec(), partitions=[partition])[partition]
    assert live == fingerprint_items(list(replayed.raw_items()))


def test_a_repeated_decision_sends_only_what_was_missing(
        settings: OnceflowSettings, tmp_path: Path, uid: str) -> None:
    facts, partition = _half_written_then_restarted(settings, tmp_path, uid, table_after=1)
    ids = Counter(f.event_id for f in facts)
    assert max(ids.values()) == 1, "a fact was written twice"
    assert not [f for f in facts if isinstance(f, DecisionClosed)]
    assert [f.last_work_unit_id for f in facts if isinstance(f, SubmissionCounted)] == [
        "wu-a/0", "wu-a/1", "wu-a/2", "wu-a/0", "wu-a/1", "wu-a/2"]
    _live_equals_replay(settings, tmp_path, partition)


def test_a_different_decision_keeps_the_written_part_and_closes_it(
        settings: OnceflowSettings, tmp_path: Path, uid: str) -> None:
    facts, partition = _half_written_then_restarted(settings, tmp_path, uid, table_after=2)
    ids = Counter(f.event_id for f in facts)
    assert max(ids.values()) == 1, "a fact was written twice"
    counted = [(f.last_work_unit_id, f.count) for f in facts if isinstance(f, SubmissionCounted)]
    # the first input: the two facts written before the restart stand (table 1), the
    # third is never made; the second input is decided afresh (table 2)
    assert counted == [("wu-a/0", 1), ("wu-a/1", 1), ("wu-a/0", 2), ("wu-a/1", 2),
                       ("wu-a/2", 2)]
    (closed,) = [f for f in facts if isinstance(f, DecisionClosed)]
    assert (closed.facts_kept, closed.processor) == (2, _Placing.name)
    assert closed.causation_id == submitted(0, unit="wu-a").event_id
    _live_equals_replay(settings, tmp_path, partition)
    store = open_partition_store(tmp_path / "placing", _Placing.name, partition)
    try:
        assert store.get("placed:wu-a/0") == {"table": 2}  # the second input's fact, last
        assert store.has_seen(submitted(0, unit="wu-a").event_id)
    finally:
        store.close()


def test_under_transactions_an_aborted_half_decision_is_never_seen(
        settings: OnceflowSettings, tmp_path: Path, uid: str) -> None:
    """A member fenced after writing two of three facts: its transaction is aborted, the
    next member decides the input whole, and nobody (the shell's recovery included)
    ever reads the aborted facts."""
    settings = settings.model_copy(update={"transactions": True})
    create_topics(settings)
    catalog = TopicCatalog(settings)
    first = submitted(0, unit="wu-a")
    partition = partition_for("wu-a", settings.partitions)
    zombie = EventProducer(settings, SingleObjectCodec(), transactional_id=f"zombie-{uid}")
    zombie.begin_transaction()
    for i, fact in enumerate(_Placing(1).decide(MemoryState(), first)[:2], start=1):
        zombie.send(catalog["workunits"], fact, partition=partition,
                    headers=fact_headers(first.event_id, i, 3))
    zombie.flush()
    zombie.abort_transaction()
    plain = EventProducer(settings, SingleObjectCodec())
    plain.send(catalog["submissions"], first)
    plain.flush()
    processor = BatchedProcessor(_Placing(2), settings, inputs=[catalog["submissions"].name],
                                 fact_topic=catalog["workunits"].name,
                                 group_id=f"g-{uid}", state_dir=tmp_path / "placing")
    assert processor.checkpointing.mode == "transactions"
    with running(processor):
        wait_for(lambda: processor.processed >= 1, what="the input processed")
    facts = events(settings, catalog["workunits"].name)
    assert [(f.last_work_unit_id, f.count) for f in facts
            if isinstance(f, SubmissionCounted)] == [("wu-a/0", 2), ("wu-a/1", 2), ("wu-a/2", 2)]
    assert not [f for f in facts if isinstance(f, DecisionClosed)]
    _live_equals_replay(settings, tmp_path, partition)
