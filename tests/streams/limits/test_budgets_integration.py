"""Budgets held before the call, on a live stack: 200 concurrent units against a prepaid
credit that pays for 20 charge at most the credit, and the rest are refused with why."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import pytest

from onceflow.billing import read_billing_records
from onceflow.billing.settings import BillingSettings, ModelPrice
from onceflow.schemas import SlotDenied, SlotGranted, WorkUnitRejected
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits.worker import build_limiter
from onceflow.streams.runtime import verify_replay
from tests.agents.fixtures import Cluster, fast_settings, unit
from tests.fixtures import events, wait_for

pytestmark = [pytest.mark.integration]

#: 100 input tokens at 0.01/1k and 100 output tokens (max_tokens) at 0.03/1k
UNIT_COST = Decimal("0.004")
CREDIT = 20 * UNIT_COST


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    fast = fast_settings(settings)
    c = Cluster(fast.model_copy(update={"billing": BillingSettings(
        prepaid_credits={"acme": CREDIT},
        default_model=ModelPrice(input_usd_per_1k=Decimal("0.01"),
                                 output_usd_per_1k=Decimal("0.03")))}))
    yield c
    c.close()


def test_two_hundred_concurrent_units_against_a_credit_for_twenty_charge_at_most_it(
        cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_billing()
    for node in ("n1", "n2", "n3"):
        cluster.start_agent(node, kinds=("llm_pod",), concurrency=8)
    units = [unit(f"u{i:03d}", kind="llm_pod", prompt="x" * 400, lease_ms=2000,
                  parameters={"max_tokens": "100"}) for i in range(200)]
    cluster.submit(*units)
    ids = [u.work_unit_id or "" for u in units]
    status = cluster.wait_settled(ids, timeout=120)
    outcomes = Counter(status.values())
    print(f"budget: {dict(outcomes)}")
    assert set(outcomes) == {"completed", "rejected"}

    # every hold has settled once the ledger billed what completed
    def billed() -> list[Decimal]:
        records = read_billing_records(cluster.settings, invocations=False)
        return [li.total_usd for li in records.line_items if li.billed
                and li.tenant_id == "acme"]

    completed = outcomes["completed"]
    wait_for(lambda: sum(1 for _ in billed()) >= 2 * completed, timeout=60,
             what="the ledger to bill every completed unit (CPU and tokens)")
    charged = sum(billed(), Decimal(0))
    print(f"budget: credit {CREDIT}, charged {charged}, {completed} completed")
    assert charged <= CREDIT
    # the credit was spent, not refused early: what is left pays for no further unit
    assert CREDIT - charged < UNIT_COST + Decimal("0.001")
    assert completed >= 15
    flow = events(cluster.settings, cluster.catalog["flow"].name)
    assert sum(isinstance(f, SlotGranted) and f.held_usd > 0 for f in flow) == completed
    rejections = [f for f in events(cluster.settings, cluster.catalog["workunits"].name)
                  if isinstance(f, WorkUnitRejected)]
    assert len(rejections) == outcomes["rejected"]
    assert {r.reason_code for r in rejections} == {"BUDGET_EXCEEDED"}
    assert all("tenant:acme" in r.reason and "USD" in r.reason for r in rejections)
    assert sum(isinstance(f, SlotDenied) for f in flow) == outcomes["rejected"]

    # the wallet shows credit, charged, reserved (nothing now) and what is available
    env = cluster.cli_env()

    def wallet() -> dict[str, str]:
        shown = subprocess.run([sys.executable, "-m", "onceflow", "ledger", "wallet", "acme",
                                "--format", "json"], env=env, capture_output=True, text=True,
                               timeout=60, check=True)
        out: dict[str, str] = json.loads(shown.stdout)
        return out

    wait_for(lambda: Decimal(wallet()["debit_usd"]) == charged, timeout=60,
             what="the wallet to fold every line item")
    w = wallet()
    assert (Decimal(w["credit_usd"]), Decimal(w["reserved_usd"])) == (CREDIT, 0)
    assert Decimal(w["available_usd"]) == CREDIT - charged
    shown = subprocess.run([sys.executable, "-m", "onceflow", "limits", "--format", "json"],
                           env=env, capture_output=True, text=True, timeout=60, check=True)
    (budget,) = json.loads(shown.stdout)["budgets"]
    assert (budget["scope"], Decimal(budget["reserved_usd"]), budget["waiting"]) == (
        "tenant:acme", 0, 0)
    assert Decimal(budget["charged_usd"]) == charged
    for reducer, topic in ((cluster.scheduler.reducer, "workunits"),  # type: ignore[union-attr]
                           (build_limiter(cluster.settings).reducer, "flow")):
        check = verify_replay(reducer, cluster.settings, cluster.catalog[topic].name)
        assert check.equal, (topic, check.first_difference())
