"""Trust end to end: a node that keeps failing stops getting work, and comes back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onceflow.schemas import TrustScoreUpdated, WorkUnitScheduled
from onceflow.streams.runtime import verify_replay
from onceflow.streams.settings import OnceflowSettings, SchedulerSettings, TrustSettings
from onceflow.streams.trust.worker import build_trust
from tests.agents.fixtures import Cluster, fast_settings, unit
from tests.fixtures import events, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    fast = fast_settings(settings)
    fast = fast.model_copy(update={
        # the failing node's units are retried elsewhere
        "scheduler": fast.scheduler.model_copy(update={
            "retryable_errors": [*SchedulerSettings().retryable_errors, "node_fault"],
            "retry_base_ms": 20}),
        # evidence fades within seconds of logged time, so a quarantine ends in a test
        "trust": TrustSettings(decay_per_hour=1e-300),
        # short agent queues: a burst spills over to the released node instead of all of
        # it queueing on the more trusted one
        "agent": fast.agent.model_copy(update={"queue_limit": 4}),
    })
    c = Cluster(fast)
    yield c
    c.close()


def test_a_failing_node_loses_work_and_recovers_after_it_behaves(cluster: Cluster) -> None:
    cluster.start_scheduler()
    trust = build_trust(cluster.settings)
    cluster._spawn(lambda: trust.run(cluster.stop))
    cluster.start_agent("n1", concurrency=4)
    cluster.start_agent("n2", concurrency=4)
    view = cluster.scheduler.reducer.view  # type: ignore[union-attr]

    flaky = [unit(f"flaky-{i}", handler="fail_on_nodes", parameters={"nodes": "n2"},
                  simulated_ms=5) for i in range(40)]
    cluster.submit(*flaky)
    wait_for(lambda: "n2" in view.quarantined, timeout=60, what="n2 quarantined")
    assert "n1" not in view.quarantined
    during = [unit(f"during-{i}", simulated_ms=5) for i in range(40)]
    cluster.submit(*during)
    assert set(cluster.wait_settled([u.work_unit_id or "" for u in during]).values()) == \
        {"completed"}
    facts = events(cluster.settings, cluster.catalog["workunits"].name)
    placed = {(f.work_unit_id, f.selected_node_id) for f in facts
              if isinstance(f, WorkUnitScheduled) and (f.work_unit_id or "").startswith("during")}
    assert placed and {node for _, node in placed} == {"n1"}, "a quarantined node got work"
    # retried elsewhere (a unit that drew n2 for all its attempts before the quarantine
    # took effect has failed for good)
    assert "completed" in set(cluster.wait_settled([u.work_unit_id or "" for u in flaky])
                              .values())

    wait_for(lambda: "n2" not in view.quarantined, timeout=90,
             what="n2 released as its failures fade")
    after = [unit(f"after-{i}", simulated_ms=20) for i in range(120)]
    cluster.submit(*after)
    cluster.wait_settled([u.work_unit_id or "" for u in after])

    def n2_succeeded() -> TrustScoreUpdated | None:
        mine = [f for f in events(cluster.settings, cluster.catalog["trust"].name)
                if isinstance(f, TrustScoreUpdated) and f.node_id == "n2"]
        return next((f for f in reversed(mine) if f.outcome == "success"), None)

    recovered = wait_for(n2_succeeded, timeout=30, what="n2 completing work again")
    assert not recovered.quarantined
    assert recovered.trust_score > cluster.settings.trust.release_above
    check = verify_replay(trust.reducer, cluster.settings, cluster.catalog["trust"].name)
    assert check.equal, check.first_difference()
