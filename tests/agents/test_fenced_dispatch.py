"""The agents' side of fencing: a dispatch a fenced scheduler wrote is never claimed.

A scheduler member the group moved on from may still send a dispatch before it learns;
the dispatch sits in its transaction, which never commits. Agents read their dispatch
partition `read_committed`, so they never see it, while a dispatch the owner commits
is claimed at once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from onceflow.schemas import ClaimRequested, SingleObjectCodec, WorkUnitScheduled
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from tests.agents.fixtures import Cluster, fast_settings
from tests.fixtures import events, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    c = Cluster(fast_settings(settings))
    yield c
    c.close()


def _dispatch(wu: str) -> WorkUnitScheduled:
    now = int(time.time() * 1000)
    return WorkUnitScheduled(
        event_id=f"sched-{wu}", occurred_at=now, tenant_id="acme", execution_session_id="s1",
        work_unit_id=wu, selected_node_id="n1", attempt_index=1, score=1.0,
        eligible_node_count=1, reason_code="best_score", scheduling_epoch=1, decided_at=now,
        lease_expires_at=now + 60_000, simulated_ms=1)


def test_a_dispatch_from_a_fenced_scheduler_is_never_claimed(cluster: Cluster,
                                                             uid: str) -> None:
    cluster.start_agent("n1")
    dispatch = cluster.catalog["dispatch"]
    zombie = EventProducer(cluster.settings, SingleObjectCodec(),
                           transactional_id=f"scheduler.zombie-{uid}")
    zombie.begin_transaction()
    zombie.send(dispatch, _dispatch("fenced-1"), partition=dispatch.partition_of("n1"))
    zombie.flush()
    # the group moved on: the coordinator refuses the zombie's commit and aborts it
    zombie.abort_transaction()
    owner = EventProducer(cluster.settings, SingleObjectCodec(),
                          transactional_id=f"scheduler.owner-{uid}")
    owner.begin_transaction()
    owner.send(dispatch, _dispatch("owned-1"), partition=dispatch.partition_of("n1"))
    owner.commit_transaction()

    def claims() -> set[str]:
        return {e.work_unit_id or "" for e in events(cluster.settings,
                                                      cluster.catalog["reports"].name)
                if isinstance(e, ClaimRequested)}

    wait_for(lambda: "owned-1" in claims(), timeout=30, what="the owner's dispatch claimed")
    assert "fenced-1" not in claims()
