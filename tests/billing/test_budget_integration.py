"""Budgets end to end: a prepaid tenant's spend reaches the scheduler through its wallet."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from onceflow.schemas import WorkUnitRejected
from onceflow.streams.settings import BillingSettings, OnceflowSettings
from tests.agents.fixtures import Cluster, fast_settings, unit
from tests.fixtures import events, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    prepaid = BillingSettings(prepaid_credits={"poor": Decimal("0.000010")})
    c = Cluster(fast_settings(settings).model_copy(update={"billing": prepaid}))
    yield c
    c.close()


def test_a_prepaid_tenant_is_rejected_once_its_wallet_cannot_pay(cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1")
    cluster.start_billing()
    first = unit("poor-1", simulated_ms=15)  # estimated 0.0000075 USD of 0.00001 credit
    first = first.model_copy(update={"tenant_id": "poor"})
    cluster.submit(first)
    assert cluster.wait_settled(["poor-1"]) == {"poor-1": "completed"}
    view = cluster.scheduler.reducer.view  # type: ignore[union-attr]
    charged = wait_for(lambda: view.charged_to("poor"), timeout=30,
                       what="the scheduler to see the tenant's wallet")
    assert charged >= Decimal("0.000007")  # at least 15 ms of CPU was charged
    second = unit("poor-2", simulated_ms=15).model_copy(update={"tenant_id": "poor"})
    rich = unit("rich-1", simulated_ms=15)  # tenant acme has no prepaid limit
    cluster.submit(second, rich)
    assert cluster.wait_settled(["poor-2", "rich-1"]) == {"poor-2": "rejected",
                                                         "rich-1": "completed"}
    (rejection,) = [e for e in events(cluster.settings, cluster.catalog["workunits"].name)
                    if isinstance(e, WorkUnitRejected) and e.work_unit_id == "poor-2"]
    assert rejection.reason_code == "BUDGET_EXCEEDED"
    assert f"charged {charged:f}" in rejection.reason
