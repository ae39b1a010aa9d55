"""Bad records on every input topic of every role, on the live stack: each goes to the
dead-letter topic once per role that reads it, with its origin; no role stops; the valid
work sent between the bad records runs and is billed.

The kinds: random bytes; a known type's fingerprint before a corrupt body; a fingerprint
nobody knows; a well-formed body that breaks its contract (a negative time, a negative
amount or count, a value outside its enumeration); a valid event with a huge field; and,
on a topic that declares what it carries, a well-formed event of another type."""

from __future__ import annotations

import io
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer

from onceflow.infra.broker import free_port
from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import (
    SINGLE_OBJECT_MARKER,
    ClaimRequested,
    ControlRequested,
    Event,
    LedgerLineItem,
    LlmInvocationCompleted,
    NodeHeartbeat,
    QueueSampled,
    SingleObjectCodec,
    WorkUnitCompleted,
    WorkUnitScheduled,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import dead_letter_from_message
from onceflow.streams.topics import TopicCatalog, create_topics
from onceflow.streams.topics.catalog import Topic
from tests.agents.fixtures import fast_settings, unit
from tests.fixtures import event_messages, submit_units, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

#: every input topic a role reads as a stream (tables are skipped, not dead-lettered:
#: every reader of a table would), with the roles that read it; dispatch is read by the
#: agent whose partition it is
READERS: dict[str, tuple[str, ...]] = {
    "submissions": ("scheduler",), "reports": ("scheduler",), "control": ("scheduler",),
    "workunits": ("ledger", "anomalies"), "llm": ("ledger", "anomalies"),
    "ledger": ("wallets", "anomalies", "views-sink"), "nodes": ("trust",),
    "outcomes": ("trust",), "queue": ("autoscaler",), "dispatch": ("agent:n1",),
}
#: bad records of each kind per topic
EACH = 3


def bad_records(rng: random.Random, event_type: str) -> list[bytes]:
    """Random bytes; the marker and a known event type's fingerprint before a corrupt body;
    the marker and a fingerprint nobody knows."""
    codec = SingleObjectCodec()
    fingerprint = codec.registry.for_type(event_type).fingerprint
    out = []
    for _ in range(EACH):
        out.append(rng.randbytes(rng.randint(1, 300)))
        out.append(SINGLE_OBJECT_MARKER + fingerprint + rng.randbytes(rng.randint(0, 50)))
        out.append(SINGLE_OBJECT_MARKER + rng.randbytes(8) + rng.randbytes(20))
    return out


def _sample(event_type: str) -> Event:
    """A valid event of a type, about a unit nobody submits."""
    common: dict[str, Any] = {"event_id": f"fuzz-{event_type}", "occurred_at": 1,
                              "work_unit_id": "fuzz-unit"}
    if event_type == "workunit.submitted":
        return WorkUnitSubmitted(**common)
    if event_type == "workunit.claim.requested":
        return ClaimRequested(**common, node_id="n1", attempt_index=1)
    if event_type == "control.requested":
        return ControlRequested(**common, action="pause", scope="unit", requested_by="fuzz")
    if event_type == "workunit.completed":
        return WorkUnitCompleted(**common, selected_node_id="n1", attempt_index=1,
                                 cpu_seconds=Decimal("1"))
    if event_type == "llm.invocation.completed":
        return LlmInvocationCompleted(**common, node_id="n1", attempt_index=1, provider="p",
                                      model="m", tokens_in=1, tokens_out=1, total_tokens=2,
                                      latency_ms=1, estimated_cost_usd=Decimal("0"))
    if event_type == "ledger.line_item":
        return LedgerLineItem(**common, line_item_id="fuzz-li", source_event_id="fuzz-src",
                              source_event_type="workunit.completed",
                              line_item_type="workunit_cpu", total_usd=Decimal("1"),
                              pricing_version="v1")
    if event_type == "node.heartbeat":
        return NodeHeartbeat(event_id="fuzz-hb", occurred_at=1, node_id="fuzz-node")
    if event_type == "scheduler.queue.sampled":
        return QueueSampled(event_id="fuzz-q", occurred_at=1)
    assert event_type == "workunit.scheduled"
    return WorkUnitScheduled(**common, selected_node_id="n1", attempt_index=1, score=1.0,
                             eligible_node_count=1, reason_code="best_score",
                             scheduling_epoch=1, decided_at=1, lease_expires_at=2)


#: per type, a field set to what no valid event holds: a negative amount or count, or a
#: value outside its enumeration
_BREACH: dict[str, tuple[str, Any]] = {
    "workunit.submitted": ("priority", "p9"),
    "workunit.claim.requested": ("attempt_index", -1),
    "control.requested": ("action", "explode"),
    "workunit.completed": ("cpu_seconds", "-1.000000"),
    "llm.invocation.completed": ("estimated_cost_usd", "-1.000000"),
    "ledger.line_item": ("total_usd", "-1.000000"),
    "node.heartbeat": ("health_status", "on-fire"),
    "scheduler.queue.sampled": ("queue", -4),
    "workunit.scheduled": ("reason_code", "whim"),
}


def breaking(event: Event, **changes: Any) -> bytes:
    """`event` encoded with `changes` made to its Avro record: well-formed bytes under its
    own fingerprint, whose values break the event's contract."""
    codec = SingleObjectCodec()
    entry = codec.registry.for_type(event.event_type)
    record = fastavro.schemaless_reader(io.BytesIO(codec.encode(event)[10:]), entry.parsed)
    record.update(changes)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, entry.parsed, record)
    return SINGLE_OBJECT_MARKER + entry.fingerprint + body.getvalue()


def worse_records(topic: Topic, event_type: str) -> list[bytes]:
    """Contract breaches, a valid event with a huge field, and (where the topic declares
    what it carries) a well-formed event of another type."""
    codec = SingleObjectCodec()
    sample = _sample(event_type)
    field, value = _BREACH[event_type]
    out = [breaking(sample, occurred_at=-1), breaking(sample, **{field: value}),
           codec.encode(sample.model_copy(update={"execution_session_id": "x" * 600_000}))]
    if topic.carries is not None:
        stray = _sample("node.heartbeat" if topic.role != "nodes" else "scheduler.queue.sampled")
        out.append(codec.encode(stray))
    return out


#: an event type each topic carries, whose fingerprint the corrupt records borrow
CARRIES = {"submissions": "workunit.submitted", "reports": "workunit.claim.requested",
           "control": "control.requested", "workunits": "workunit.completed",
           "llm": "llm.invocation.completed", "ledger": "ledger.line_item",
           "nodes": "node.heartbeat", "outcomes": "workunit.completed",
           "queue": "scheduler.queue.sampled", "dispatch": "workunit.scheduled"}


def test_bad_records_on_every_input_topic_are_dead_lettered_once_per_reader(
        settings: OnceflowSettings) -> None:
    fast = fast_settings(settings)
    create_topics(fast)
    catalog = TopicCatalog(fast)
    roles = start_roles(fast, agent_specs(1, concurrency=4, region="eu-west"), billing=True,
                        trust=True, autoscaler=True, views_port=free_port())
    rng = random.Random(5)
    sent: list[tuple[str, int, int]] = []
    producer = Producer(fast.producer_config())

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        sent.append((msg.topic(), msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    try:
        valid = [unit(f"ok-{i:03d}", simulated_ms=1) for i in range(60)]
        for i, role in enumerate(sorted(READERS)):
            topic = catalog[role]  # type: ignore[index]
            records = [*bad_records(rng, CARRIES[role]), *worse_records(topic, CARRIES[role])]
            for j, raw in enumerate(records):
                partition = (topic.partition_of("n1") if role == "dispatch"
                             else j % topic.partitions)
                producer.produce(topic.name, raw, key=f"bad-{j}".encode(),
                                 partition=partition, on_delivery=delivered)
            producer.flush()
            submit_units(fast, valid[i * 6:(i + 1) * 6])  # valid work between the bad
        expected: Counter[tuple[str, str]] = Counter()
        for topic_name, _p, _o in sent:
            role = catalog.by_name(topic_name).role  # type: ignore[union-attr]
            for reader in READERS[role]:
                expected[(topic_name, reader)] += 1
        dlq = catalog["deadletters"].name

        def dead_letters() -> Counter[tuple[str, str]]:
            return Counter((d.origin_topic, d.processor) for d in map(
                dead_letter_from_message, event_messages(fast, dlq)))

        wait_for(lambda: dead_letters() == expected, timeout=90, interval=1.0,
                 what="every bad record dead-lettered once by each of its readers")
        # with its origin: each bad record's exact position, once per reader
        origins = Counter((d.origin_topic, d.origin_partition, d.origin_offset) for d in map(
            dead_letter_from_message, event_messages(fast, dlq)))
        assert origins == Counter({
            (t, p, o): len(READERS[catalog.by_name(t).role])  # type: ignore[union-attr]
            for t, p, o in sent})
        # the huge and the misrouted ones, by name, at each of their readers
        kinds = Counter(d.error_type for d in map(
            dead_letter_from_message, event_messages(fast, dlq)))
        readers = {role: len(READERS[role]) for role in READERS}
        assert kinds["OversizedRecord"] == sum(readers.values())
        assert kinds["WrongTopic"] == sum(
            n for role, n in readers.items() if catalog[role].carries is not None)  # type: ignore[index]
        per_topic = Counter(t for t, _p, _o in sent)
        print(f"bad input: {sum(per_topic.values())} records on {len(per_topic)} topics "
              f"({', '.join(f'{t.removeprefix(fast.topic_prefix)} {n}' for t, n in sorted(per_topic.items()))}), "
              f"{sum(expected.values())} dead letters expected and found; kinds: "
              f"{dict(sorted(kinds.items()))}")
        # the valid work between them ran and was billed, and no role stopped
        from onceflow.billing import read_wallets
        from onceflow.infra.observe import read_progress

        wait_for(lambda: read_progress(fast).by_state() == {"completed": len(valid)},
                 timeout=60, what="the valid units run")
        wait_for(lambda: (w := read_wallets(fast).get("tenant:acme")) is not None
                 and w.record_count == len(valid), timeout=60,
                 what="the valid units billed")
        assert all(r.process.poll() is None for r in roles), [
            (r.name, r.process.returncode) for r in roles if r.process.poll() is not None]
    finally:
        stop_roles(roles)
