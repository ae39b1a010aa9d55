"""Autoscaling end to end: a burst throttles admission, grows the fleet, then it shrinks."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from onceflow.autoscaler import CapacityController
from onceflow.infra.broker import EmbeddedKafka
from onceflow.infra.observe import ProgressFollower, read_capacity
from onceflow.infra.roles import RoleProcess, agent_specs, start_roles, stop_roles
from onceflow.infra.stack import StackState, pid_alive, read_stack, write_stack
from onceflow.schemas import (
    CapacityScaleRequested,
    QueueSampled,
    SingleObjectCodec,
    WorkUnitAttemptFailed,
    WorkUnitDeferred,
)
from onceflow.settings import AgentSettings, AutoscalerSettings, OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.runtime import fingerprint_partitions, replay_facts
from onceflow.streams.scheduler import SETTLED_STATES
from onceflow.streams.topics import TopicCatalog, create_topics
from tests.agents.fixtures import fast_settings, unit
from tests.fixtures import caught_up, events, live_fingerprint, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture
def fleet_settings(settings: OnceflowSettings, broker: EmbeddedKafka) -> OnceflowSettings:
    fast = fast_settings(settings)
    fast = fast.model_copy(update={
        "scheduler": fast.scheduler.model_copy(update={"queue_sample_ms": 200}),
        # A node asks for half a second of queued work: well inside the 3 s leases of
        # these units even on a loaded machine (the 2 s default left 0.5 s of margin
        # once the lease safety is taken off, and a busy CI machine ran over it).
        "agent": AgentSettings(heartbeat_interval_ms=300, drain_timeout_s=60,
                               queue_horizon_s=0.5),
        # windows of half a second, and small numbers, so a test burst is "pressure"
        "autoscaler": AutoscalerSettings(
            window_ms=500, scale_up_queue=40, scale_up_windows=2, scale_up_cooldown_ms=1000,
            scale_down_queue=5, scale_down_utilization=0.6, scale_down_windows=4,
            scale_down_cooldown_ms=3000, max_replicas=3, min_replicas=1, initial_replicas=1,
            throttle_queue=150, critical_queue=10**6, open_queue=10, open_windows=2),
    })
    create_topics(fast)
    assert broker.process is not None
    write_stack(fast, StackState(fast.bootstrap_servers, broker.process.pid, time.time()))
    return fast


@pytest.fixture
def roles(fleet_settings: OnceflowSettings) -> Iterator[list[RoleProcess]]:
    started = start_roles(fleet_settings, agent_specs(1, concurrency=2, region="eu-west"),
                          scheduler=True, autoscaler=True,
                          fleet=["--concurrency", "2", "--region", "eu-west"])
    stack = read_stack(fleet_settings)
    assert stack is not None
    stack.processes = {r.name: r.pid for r in started}
    write_stack(fleet_settings, stack)
    yield started
    stop_roles(started)
    stack = read_stack(fleet_settings)
    for pid in (stack.processes.values() if stack else []):
        if pid_alive(pid):
            import os
            import signal
            os.kill(pid, signal.SIGTERM)


def test_a_burst_throttles_grows_the_fleet_and_it_shrinks_after(
        fleet_settings: OnceflowSettings, roles: list[RoleProcess]) -> None:
    s = fleet_settings
    producer = EventProducer(s, SingleObjectCodec())
    topic = TopicCatalog(s)["submissions"]
    burst = [unit(f"burst-{i}", simulated_ms=40) for i in range(400)]
    for u in burst:
        producer.send(topic, u)
    producer.flush()

    wait_for(lambda: read_capacity(s)["mode"] == "THROTTLED", timeout=60,
             what="admission THROTTLED by the burst")

    def scheduler_admits_as(mode: str) -> bool:
        # The scheduler learns the mode from a global table, polled between its
        # batches: the units below must reach it after it has, not just after the
        # autoscaler has published it. Its queue samples record the mode it saw.
        return any(isinstance(e, QueueSampled) and e.admission_mode == mode
                   for e in events(s, TopicCatalog(s)["queue"].name))

    wait_for(lambda: scheduler_admits_as("THROTTLED"), timeout=30,
             what="the scheduler admitting as THROTTLED")
    held = [unit(f"held-{i}", simulated_ms=5) for i in range(20)]  # p2, while THROTTLED
    for u in held:
        producer.send(topic, u)
    producer.flush()

    def agents() -> set[str]:
        stack = read_stack(s)
        return {n for n, pid in (stack.processes if stack else {}).items()
                if n.startswith("agent-") and pid_alive(pid)}

    wait_for(lambda: "agent-n2" in agents(), timeout=60, what="the fleet starting agent n2")
    follower = ProgressFollower(s)

    def settled(units: list) -> bool:
        follower.poll()
        return all(follower.progress.status.get(u.work_unit_id) in SETTLED_STATES
                   for u in units)

    wait_for(lambda: settled(burst + held), timeout=120, what="every unit settled")
    assert follower.progress.by_state() == {"completed": len(burst) + len(held)}
    assert follower.progress.completed_by_node.get("n2", 0) > 0, "the new agent took work"
    facts = events(s, TopicCatalog(s)["workunits"].name)
    throttled = {f.work_unit_id for f in facts
                 if isinstance(f, WorkUnitDeferred) and f.reason_code == "throttled"}
    assert throttled and throttled <= {u.work_unit_id for u in held}

    # quiet: the controller asks for fewer replicas and the fleet drains agents
    wait_for(lambda: len(agents()) < 2, timeout=90, what="the fleet draining an agent")
    requests = [e for e in events(s, TopicCatalog(s)["capacity"].name)
                if isinstance(e, CapacityScaleRequested)]
    assert any(r.new_replicas > r.previous_replicas for r in requests)
    assert any(r.new_replicas < r.previous_replicas for r in requests)
    timeouts = [f for f in events(s, TopicCatalog(s)["workunits"].name)
                if isinstance(f, WorkUnitAttemptFailed) and f.error_code == "node_timeout"]
    assert timeouts == [], "a drained agent left work behind"
    follower.close()

    # The controller's state equals a fold of its fact topic from offset 0, once the
    # scheduler (its only source) has stopped sampling and the controller has stopped.
    scheduler = next(r for r in roles if r.name == "scheduler")
    scheduler.process.terminate()
    scheduler.process.wait(timeout=30)
    autoscaler = next(r for r in roles if r.name == "autoscaler")
    queue = TopicCatalog(s)["queue"].name
    wait_for(lambda: caught_up(s, f"{s.topic_prefix}autoscaler", [queue]), timeout=60,
             what="the controller to read every queue sample")
    autoscaler.process.terminate()
    autoscaler.process.wait(timeout=30)
    replayed = replay_facts(CapacityController(s.autoscaler), s,
                            TopicCatalog(s)["capacity"].name, SingleObjectCodec())
    assert live_fingerprint(s.state_dir, "autoscaler", 1) == \
        fingerprint_partitions({0: list(replayed[0].raw_items())})



def test_a_fleet_manager_killed_and_restarted_follows_what_was_asked_meanwhile(
        fleet_settings: OnceflowSettings) -> None:
    """SIGKILL the fleet manager; a scale request comes while it is away; restarted, it
    follows it (the agents number what was asked, each under its own id), then drains."""
    s = fleet_settings
    producer = EventProducer(s, SingleObjectCodec())
    capacity = TopicCatalog(s)["capacity"]
    requests = 0

    def ask(replicas: int) -> None:
        nonlocal requests
        requests += 1
        producer.send(capacity, CapacityScaleRequested(
            event_id=f"scale-{requests}", occurred_at=int(time.time() * 1000),
            previous_replicas=0, new_replicas=replicas, reason="test"))
        producer.flush()

    def agents() -> dict[str, int]:
        stack = read_stack(s)
        return {n: pid for n, pid in (stack.processes if stack else {}).items()
                if n.startswith("agent-") and pid_alive(pid)}

    fleet_args = ["--concurrency", "1", "--region", "eu-west"]
    roles = start_roles(s, [], scheduler=False, fleet=fleet_args)
    try:
        ask(2)
        wait_for(lambda: set(agents()) == {"agent-n1", "agent-n2"}, timeout=60,
                 what="two agents")
        (fleet,) = roles
        os.kill(fleet.pid, signal.SIGKILL)
        fleet.process.wait(timeout=10)
        ask(3)  # while nobody follows
        roles = start_roles(s, [], scheduler=False, fleet=fleet_args)
        wait_for(lambda: set(agents()) == {"agent-n1", "agent-n2", "agent-n3"}, timeout=60,
                 what="the restarted manager to start the third agent")
        ask(1)
        wait_for(lambda: set(agents()) == {"agent-n1"}, timeout=90,
                 what="the manager to drain two agents")
    finally:
        stop_roles(roles)
        for pid in agents().values():
            os.kill(pid, signal.SIGTERM)
