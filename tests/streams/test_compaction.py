"""Compaction on the real broker: table topics keep the latest value per key, event topics
lose only retried duplicates, and every role recovers from a compacted changelog to the
state it had before the cleaner ran."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from onceflow.billing.worker import build_ledger, build_wallets
from onceflow.infra.observe import ProgressFollower
from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer, make_consumer, read_topic_to_end, watermarks
from onceflow.streams.runtime import BatchedProcessor, fingerprint_partitions, replay_facts
from onceflow.streams.scheduler import SETTLED_STATES
from onceflow.streams.scheduler.worker import build_scheduler
from onceflow.streams.topics import TopicCatalog, create_topics
from onceflow.streams.trust.worker import build_trust
from tests.agents.fixtures import fast_settings, unit
from tests.fixtures import live_fingerprint, submitted, wait_for

pytestmark = pytest.mark.integration

#: segments roll every 100 ms (on the next write) and any dirt makes a log cleanable
FAST_COMPACTION = {"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
                   "delete.retention.ms": "100", "min.compaction.lag.ms": "0"}


def compact_fast(settings: OnceflowSettings, topics: list[str]) -> None:
    admin = AdminClient(settings.admin_config())
    resources = [
        ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in FAST_COMPACTION.items()])
        for t in topics
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result()


def _records(settings: OnceflowSettings, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    return [(m.partition() or 0, m.key(), m.value() or b"")
            for m in read_topic_to_end(settings, topic)]


def _watermarks(settings: OnceflowSettings, topic: str) -> list[tuple[int, int]]:
    consumer = make_consumer(settings, None)
    try:
        parts = TopicCatalog(settings).by_name(topic)
        assert parts is not None
        return [watermarks(consumer, topic, p) for p in range(parts.partitions)]
    finally:
        consumer.close()


def _gaps(settings: OnceflowSettings, topic: str) -> int:
    """Offsets between each partition's low and high watermark that hold no record
    any more: what the cleaner removed."""
    span = sum(high - low for low, high in _watermarks(settings, topic))
    return span - len(_records(settings, topic))


def _log_end(settings: OnceflowSettings, topic: str) -> list[int]:
    return [high for _low, high in _watermarks(settings, topic)]


def _roll(producer: EventProducer, topic: str, partitions: int, tag: str) -> None:
    """One record per partition. The first write once segment.ms has passed rolls the
    segment the earlier records are in, which the cleaner may then clean (it never
    cleans the active one), so the conditions below roll on every poll until they hold."""
    for p in range(partitions):
        producer.send_raw(topic, b"roll", key=f"roll-{tag}-{p}".encode(), partition=p)
    producer.flush()


@pytest.mark.parametrize("role", ["nodes", "trust", "wallets", "views"])
def test_a_table_topic_keeps_the_latest_value_per_key(settings: OnceflowSettings,
                                                      role: str) -> None:
    create_topics(settings)
    topic = TopicCatalog(settings)[role]
    assert topic.cleanup_policy == "compact"
    compact_fast(settings, [topic.name])
    producer = EventProducer(settings, SingleObjectCodec())
    keys = [f"{role}-key-{k}" for k in range(6)]
    for version in range(20):
        for k in keys:
            producer.send_raw(topic.name, f"{k}:v{version}".encode(), key=k.encode(),
                              partition=topic.partition_of(k))
    producer.flush()

    def cleaned() -> dict[str, list[bytes]] | None:
        _roll(producer, topic.name, topic.partitions, "a")
        seen: dict[str, list[bytes]] = {}
        for _p, key, value in _records(settings, topic.name):
            seen.setdefault((key or b"").decode(), []).append(value)
        mine = {k: seen.get(k, []) for k in keys}
        return mine if all(len(v) == 1 for v in mine.values()) else None

    latest = wait_for(cleaned, timeout=60, interval=0.5, what=f"the cleaner to compact {role}")
    assert latest == {k: [f"{k}:v19".encode()] for k in keys}


def test_an_event_topic_loses_retried_duplicates_and_keeps_every_event(
        settings: OnceflowSettings) -> None:
    create_topics(settings)
    topic = TopicCatalog(settings)["workunits"]
    assert topic.key == "event_id"
    compact_fast(settings, [topic.name])
    producer = EventProducer(settings, SingleObjectCodec())
    events = [submitted(i) for i in range(120)]
    for e in events:
        producer.send(topic, e)
    for e in events[::4]:  # a client's retries: the same event again, same id, same bytes
        producer.send(topic, e)
    producer.flush()
    assert len(_records(settings, topic.name)) == 150

    def distinct() -> Counter[bytes] | None:
        _roll(producer, topic.name, topic.partitions, "b")
        keys = Counter(k or b"" for _p, k, v in _records(settings, topic.name) if v != b"roll")
        return keys if max(keys.values()) == 1 else None

    keys = wait_for(distinct, timeout=60, interval=0.5, what="the cleaner to drop retries")
    assert set(keys) == {e.event_id.encode() for e in events}


def _recover(build: Callable[..., BatchedProcessor], settings: OnceflowSettings,
             name: str) -> str:
    """Start a role on an empty state directory, let it recover, stop it, fingerprint it."""
    ready, stop = threading.Event(), threading.Event()
    processor = build(settings, on_ready=ready.set)
    thread = threading.Thread(target=processor.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        assert ready.wait(60), f"{name} never recovered"
    finally:
        stop.set()
        thread.join(60)
    return live_fingerprint(settings.state_dir, name, settings.partitions)


def _caught_up(settings: OnceflowSettings, group: str, topics: list[str]) -> bool:
    """Whether `group` committed every input up to its high watermark."""
    consumer = make_consumer(settings, group)  # never subscribes: reads the group's offsets
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in range(TopicCatalog(settings).by_name(t).partitions)]  # type: ignore[union-attr]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.committed(tps, timeout=10)}
        return all(committed[(tp.topic, tp.partition)]
                   >= consumer.get_watermark_offsets(tp, timeout=10)[1]
                   or consumer.get_watermark_offsets(tp, timeout=10)[1] == 0 for tp in tps)
    finally:
        consumer.close()


def _replayed(settings: OnceflowSettings, reducer: object, topic: str) -> str:
    states = replay_facts(reducer, settings, topic, SingleObjectCodec())  # type: ignore[arg-type]
    return fingerprint_partitions({p: list(s.raw_items()) for p, s in states.items()})


@pytest.mark.chaos
def test_every_role_recovers_from_a_compacted_changelog(settings: OnceflowSettings) -> None:
    fast = fast_settings(settings)
    create_topics(fast)
    catalog = TopicCatalog(fast)
    changelogs = {"scheduler": catalog["workunits"].name, "ledger": catalog["ledger"].name,
                  "wallets": catalog["wallets"].name, "trust": catalog["trust"].name}
    compact_fast(fast, list(changelogs.values()))
    roles = start_roles(fast, agent_specs(2, concurrency=4), billing=True, trust=True)
    by_name = {r.name: r for r in roles}
    try:
        producer = EventProducer(fast, SingleObjectCodec())
        units = [unit(f"c-{i}", simulated_ms=1) for i in range(240)]
        units += [unit(f"l-{i}", kind="llm_pod", prompt=f"q{i}") for i in range(60)]
        for u in units:
            producer.send(catalog["submissions"], u)
        producer.flush()
        follower = ProgressFollower(fast)

        def settled() -> bool:
            follower.poll()
            return all(follower.progress.status.get(u.work_unit_id or "") in SETTLED_STATES
                       for u in units)

        wait_for(settled, timeout=120, what="every unit settled")
        follower.close()
        # Quiet inputs, so that the states compared are the states of the whole log: the
        # agents (heartbeats) and the scheduler (ticks) stop, then billing and trust catch up.
        stop_roles([r for r in roles if r.name.startswith("agent-") or r.name == "scheduler"])
        for group, inputs in (("ledger", ["workunits", "llm"]), ("wallets", ["ledger"]),
                              ("trust", ["nodes", "outcomes"])):
            wait_for(lambda g=group, i=inputs: _caught_up(
                fast, f"{fast.topic_prefix}{g}", [catalog[t].name for t in i]),  # type: ignore[index]
                timeout=60, what=f"{group} to commit every input")
    finally:
        stop_roles(list(by_name.values()))  # SIGTERM: each role checkpoints before it exits
    live = {name: live_fingerprint(fast.state_dir, name, fast.partitions)
            for name in changelogs}
    reducers = {"scheduler": build_scheduler(fast).reducer, "ledger": build_ledger(fast).reducer,
                "wallets": build_wallets(fast).reducer, "trust": build_trust(fast).reducer}
    before = {name: _replayed(fast, reducers[name], topic) for name, topic in changelogs.items()}
    assert {n: before[n] for n in ("ledger", "wallets", "trust")} == \
        {n: live[n] for n in ("ledger", "wallets", "trust")}
    # The last fact of each partition stays in the active segment; a roll makes the rest
    # cleanable. The table changelogs (wallets, trust) hold superseded values.

    def compacted() -> bool:
        for name in ("wallets", "trust"):
            _roll(producer, changelogs[name], catalog[name].partitions, name)  # type: ignore[index]
        return _gaps(fast, changelogs["wallets"]) > 0 and _gaps(fast, changelogs["trust"]) > 0

    wait_for(compacted, timeout=60, interval=0.5,
             what="the cleaner to compact the wallets and trust changelogs")
    after = {name: _replayed(fast, reducers[name], topic) for name, topic in changelogs.items()}
    assert after == before, "a replay of a compacted changelog must reach the same state"
    ends = {name: _log_end(fast, topic) for name, topic in changelogs.items()}
    shutil.rmtree(fast.state_dir)
    builders = {"ledger": build_ledger, "wallets": build_wallets, "trust": build_trust}
    for name, build in builders.items():
        assert _recover(build, fast, name) == live[name], \
            f"{name} recovered from its compacted changelog to another state"
    # Recovery decided nothing again: no fact was added to any changelog.
    assert {name: _log_end(fast, topic) for name, topic in changelogs.items()} == ends
