"""Fair queuing on a live stack: a tenant with a 10,000-unit backlog does not hold back a
tenant that sends 100; the small tenant's units are granted in proportion to its weight."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from onceflow.schemas import SlotGranted, WorkUnitSubmitted
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import LimitsSettings
from tests.agents.fixtures import Cluster, fast_settings
from tests.fixtures import events

pytestmark = [pytest.mark.integration]

BIG, SMALL = 10_000, 100
SMALL_WEIGHT = 2.0


def _unit(tenant: str, i: int) -> WorkUnitSubmitted:
    wu = f"{tenant}-{i:05d}"
    return WorkUnitSubmitted(event_id=f"sub-{wu}", occurred_at=int(time.time() * 1000),
                             tenant_id=tenant, execution_session_id=f"{tenant}-s",
                             work_unit_id=wu, simulated_ms=5, lease_ms=5000)


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    fast = fast_settings(settings)
    c = Cluster(fast.model_copy(update={"limits": LimitsSettings(
        global_concurrency=6, tenant_weights={"small": SMALL_WEIGHT})}))
    yield c
    c.close()


def test_a_small_tenant_is_not_queued_behind_a_big_tenants_backlog(cluster: Cluster) -> None:
    cluster.start_scheduler()
    for node in ("n1", "n2", "n3"):
        cluster.start_agent(node, kinds=("cpu",), concurrency=2)
    cluster.submit(*(_unit("big", i) for i in range(BIG)))
    cluster.submit(*(_unit("small", i) for i in range(SMALL)))
    small = [f"small-{i:05d}" for i in range(SMALL)]
    status = cluster.wait_settled(small, timeout=180)
    assert set(status.values()) == {"completed"}
    big_done = sum(1 for wu, s in cluster.progress().progress.status.items()
                   if wu.startswith("big-") and s == "completed")
    # The limiter's grants, in the order it made them (one partition): between the small
    # tenant's first grant and its last, the big tenant got about half as many.
    grants = [f.tenant_id for f in events(cluster.settings, cluster.catalog["flow"].name)
              if isinstance(f, SlotGranted)]
    first, last = grants.index("small"), len(grants) - 1 - grants[::-1].index("small")
    big_between = grants[first:last + 1].count("big")
    print(f"fairness: small's {SMALL} units granted among {big_between} of big's "
          f"(weight {SMALL_WEIGHT}); big had completed {big_done} of {BIG} when small was done")
    assert SMALL / SMALL_WEIGHT * 0.6 <= big_between <= SMALL / SMALL_WEIGHT * 1.4
    assert big_done < BIG / 4  # small did not wait for the backlog
