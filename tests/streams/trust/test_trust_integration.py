"""Trust end to end: a node that keeps failing is paused by its breaker, and probed back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onceflow.schemas import TrustScoreUpdated, WorkUnitScheduled
from onceflow.settings import OnceflowSettings, SchedulerSettings, TrustSettings
from onceflow.streams.runtime import verify_replay
from onceflow.streams.trust.worker import build_trust
from tests.agents.fixtures import Cluster, fast_settings, unit
from tests.fixtures import events, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    fast = fast_settings(settings)
    fast = fast.model_copy(update={
        # the failing node's units are retried elsewhere; a half-open node is probed often
        "scheduler": fast.scheduler.model_copy(update={
            "retryable_errors": [*SchedulerSettings().retryable_errors, "node_fault"],
            "retry_base_ms": 20, "breaker_probe_interval_ms": 100,
            "retry_budget": 10_000}),  # this test is about breakers, not the retry budget
        # a breaker that judges after 10 attempts and stays open 3 s, so a test sees it all
        "trust": TrustSettings(breaker_min_attempts=10, breaker_open_ms=3000),
        # short agent queues: a burst spills over to the recovered node instead of all of
        # it queueing on the other one
        "agent": fast.agent.model_copy(update={"queue_limit": 4}),
    })
    c = Cluster(fast)
    yield c
    c.close()


def _trust_of(cluster: Cluster, node: str) -> list[TrustScoreUpdated]:
    return [f for f in events(cluster.settings, cluster.catalog["trust"].name)
            if isinstance(f, TrustScoreUpdated) and f.node_id == node]


def test_a_failing_node_is_paused_by_its_breaker_then_probed_back_to_work(
        cluster: Cluster) -> None:
    cluster.start_scheduler()
    trust = build_trust(cluster.settings)
    cluster._spawn(lambda: trust.run(cluster.stop))
    cluster.start_agent("n1", concurrency=4)
    cluster.start_agent("n2", concurrency=4)
    view = cluster.scheduler.reducer.view  # type: ignore[union-attr]

    flaky = [unit(f"flaky-{i}", handler="fail_on_nodes", parameters={"nodes": "n2"},
                  simulated_ms=5) for i in range(40)]
    cluster.submit(*flaky)
    opened = wait_for(lambda: next((f for f in _trust_of(cluster, "n2")
                                    if f.breaker == "open"), None),
                      timeout=60, what="n2's breaker open")
    assert all(f.breaker == "closed" for f in _trust_of(cluster, "n1"))
    during = [unit(f"during-{i}", simulated_ms=5) for i in range(40)]
    cluster.submit(*during)
    assert set(cluster.wait_settled([u.work_unit_id or "" for u in during]).values()) == \
        {"completed"}
    # retried elsewhere: every flaky unit completes on n1 in the end
    assert set(cluster.wait_settled([u.work_unit_id or "" for u in flaky]).values()) == \
        {"completed"}
    # nothing was placed on n2 while its breaker was open
    facts = events(cluster.settings, cluster.catalog["workunits"].name)
    while_open = [f for f in facts if isinstance(f, WorkUnitScheduled)
                  and opened.occurred_at < f.decided_at < opened.breaker_until]
    assert while_open
    on_n2 = [(f.work_unit_id, f.attempt_index, f.decided_at) for f in while_open
             if f.selected_node_id != "n1"]
    assert on_n2 == [], f"placed on n2 while its breaker was open from {opened.occurred_at}"

    # then it is probed, and the probes' successes close it: n2 works again (work keeps
    # coming, as it would on a live stack, so that there is something to probe with)
    batches = iter(range(10_000))

    def closed_by_probes() -> TrustScoreUpdated | None:
        batch = next(batches)
        cluster.submit(*(unit(f"after-{batch}-{i}", simulated_ms=20) for i in range(8)))
        return next((f for f in _trust_of(cluster, "n2") if f.reason == "breaker_closed"),
                    None)

    closed = wait_for(closed_by_probes, timeout=60, interval=0.2,
                      what="n2's breaker closed by its probes")
    assert closed.breaker == "closed" and view.breaker_at("n2", closed.occurred_at) == "closed"
    assert any(f.reason == "breaker_half_open" for f in _trust_of(cluster, "n2"))
    check = verify_replay(trust.reducer, cluster.settings, cluster.catalog["trust"].name)
    assert check.equal, check.first_difference()
