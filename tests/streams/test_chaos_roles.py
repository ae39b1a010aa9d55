"""Roles the older chaos tests never killed: the autoscaler and trust, each killed with
SIGKILL mid-stream and restarted, decide every input once (compared with a pure run of
the same reducer where its input order is fixed) and end with the state their facts
fold to."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from onceflow.autoscaler import CapacityController
from onceflow.infra.roles import RoleProcess, start_roles, stop_roles
from onceflow.schemas import (
    Event,
    NodeHeartbeat,
    QueueSampled,
    SingleObjectCodec,
    WorkUnitAttemptFailed,
    WorkUnitCompleted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.runtime import verify_replay
from onceflow.streams.state import MemoryState
from onceflow.streams.topics import TopicCatalog, create_topics
from onceflow.streams.trust import TrustScorer
from tests.fixtures import caught_up, event_messages, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

T0 = 1_700_000_000_000


def facts_of(settings: OnceflowSettings, role: str) -> list[Event]:
    codec = SingleObjectCodec()
    return [codec.decode(m.value()) for m in
            event_messages(settings, TopicCatalog(settings)[role].name)]  # type: ignore[index]


def produce_steadily(settings: OnceflowSettings, events: list[tuple[str, Event]],
                     seconds: float) -> threading.Thread:
    """Send `events` (topic role, event) over about `seconds`, in a thread: the stream is
    still flowing when a role is killed."""
    def send() -> None:
        producer = EventProducer(settings, SingleObjectCodec())
        catalog = TopicCatalog(settings)
        pause = seconds / len(events)
        for role, event in events:
            producer.send(catalog[role], event)  # type: ignore[index]
            producer.poll(0)
            time.sleep(pause)
        producer.flush()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def kill_and_restart(settings: OnceflowSettings, roles: list[RoleProcess], role: str,
                     progress: int, **start: object) -> tuple[list[RoleProcess], int]:
    """SIGKILL the role once it has written `progress` facts, then start it again; returns
    the new role and how many facts were in its topic when it was killed."""
    wait_for(lambda: len(facts_of(settings, role)) >= progress, timeout=90, interval=0.05,
             what=f"{role} under way")
    (victim,) = roles
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    at_kill = len(facts_of(settings, role))
    return start_roles(settings, [], scheduler=False, **start), at_kill  # type: ignore[arg-type]


def samples(n: int) -> list[QueueSampled]:
    """Queue samples from three scheduler partitions: a burst, then quiet, then a burst."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        busy = (i // 300) % 2 == 0
        out.append(QueueSampled(
            event_id=f"qs-{i}", occurred_at=T0 + i * 100, tenant_id="system", partition=i % 3,
            queue=rng.randint(50, 400) if busy else rng.randint(0, 3),
            running=rng.randint(0, 8), node_count=2, utilization=rng.random(),
            waits_sampled=1, wait_p95_ms=rng.randint(0, 5000)))
    return out


def test_the_autoscaler_killed_mid_stream_decides_every_sample_once(
        settings: OnceflowSettings) -> None:
    create_topics(settings)
    inputs = samples(3000)
    # the reference: the same reducer over the same samples, in memory (one partition)
    reference = CapacityController(settings.autoscaler)
    state = MemoryState()
    expected = [f.event_id for e in inputs for f in reference.apply(state, e)[1]
                if isinstance(f, Event)]
    assert len(expected) > 100, "the samples must make the controller decide"
    roles = start_roles(settings, [], scheduler=False, autoscaler=True)
    sending = produce_steadily(settings, [("queue", e) for e in inputs], 6.0)
    try:
        roles, at_kill = kill_and_restart(settings, roles, "capacity", len(expected) // 4,
                                          autoscaler=True)
        assert at_kill < len(expected), "killed too late: every sample was decided"
        sending.join(60)
        wait_for(lambda: len(facts_of(settings, "capacity")) >= len(expected), timeout=120,
                 what="every decision after the restart")
    finally:
        stop_roles(roles)
    assert [f.event_id for f in facts_of(settings, "capacity")] == expected
    check = verify_replay(CapacityController(settings.autoscaler), settings,
                          TopicCatalog(settings)["capacity"].name)
    assert check.equal, check.first_difference()


def outcomes(n: int) -> list[Event]:
    """Heartbeats of three nodes and the outcomes of attempts on them."""
    rng = random.Random(11)
    out: list[Event] = []
    for i in range(n):
        node = f"n{i % 3 + 1}"
        at = T0 + i * 50
        if i % 4 == 0:
            out.append(NodeHeartbeat(
                event_id=f"hb-{i}", occurred_at=at, node_id=node,
                supported_kinds=["cpu"], available_concurrency=4, max_concurrency=4,
                health_status="healthy", version="1.0.0"))
        elif rng.random() < 0.8:
            out.append(WorkUnitCompleted(
                event_id=f"done-{i}", occurred_at=at, work_unit_id=f"u{i}", accepted=True,
                selected_node_id=node, attempt_index=1, settlement_reason="grant_holder"))
        else:
            out.append(WorkUnitAttemptFailed(
                event_id=f"fail-{i}", occurred_at=at, work_unit_id=f"u{i}",
                selected_node_id=node, attempt_index=1, error_code="node_timeout",
                retryable=True, lease_expired=True))
    return out


def test_trust_killed_mid_stream_scores_every_outcome_once(
        settings: OnceflowSettings) -> None:
    create_topics(settings)
    catalog = TopicCatalog(settings)
    inputs = outcomes(4000)
    roles = start_roles(settings, [], scheduler=False, trust=True)
    sending = produce_steadily(settings, [
        ("nodes" if isinstance(e, NodeHeartbeat) else "outcomes", e) for e in inputs], 6.0)
    try:
        roles, at_kill = kill_and_restart(settings, roles, "trust", 300, trust=True)
        assert at_kill < len(inputs), "killed too late"
        sending.join(60)

        wait_for(lambda: caught_up(settings, f"{settings.topic_prefix}trust",
                                   [catalog["nodes"].name, catalog["outcomes"].name]),
                 timeout=120, interval=0.5, what="trust to score the rest after the restart")
    finally:
        stop_roles(roles)
    facts = facts_of(settings, "trust")
    ids = [f.event_id for f in facts]
    assert len(ids) == len(set(ids)), "a fact written twice: an input decided twice"
    check = verify_replay(TrustScorer(settings.trust), settings, catalog["trust"].name)
    assert check.equal, check.first_difference()
