"""Bad records on every input topic of every role, on the live stack: each goes to the
dead-letter topic once per role that reads it, with its origin; no role stops; the valid
work sent between the bad records runs and is billed."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from confluent_kafka import Producer

from onceflow.infra.broker import free_port
from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import SINGLE_OBJECT_MARKER, SingleObjectCodec
from onceflow.streams.kafka import dead_letter_from_message
from onceflow.streams.settings import OnceflowSettings
from onceflow.streams.topics import TopicCatalog, create_topics
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
            for j, raw in enumerate(bad_records(rng, CARRIES[role])):
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
