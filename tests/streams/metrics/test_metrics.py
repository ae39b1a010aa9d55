"""Metrics: the sensor reads the figures from the facts, and every role's /metrics after a
burst agrees with the ledger."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from onceflow.billing import read_billing_records
from onceflow.infra.broker import free_port
from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import (
    CapacityWindowClosed,
    LedgerChargeHeld,
    LedgerLineItem,
    QueueSampled,
    WorkUnitAttemptFailed,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.metrics import PrometheusSensor
from onceflow.streams.topics import create_topics
from tests.agents.fixtures import fast_settings, unit
from tests.fixtures import submit_units, wait_for


def fast_topic(settings: OnceflowSettings, role: str) -> str:
    from onceflow.streams.topics import TopicCatalog

    return TopicCatalog(settings)[role].name  # type: ignore[index]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Each sample of a metric, by its labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_the_sensor_counts_what_the_facts_say() -> None:
    from prometheus_client import generate_latest

    sensor = PrometheusSensor()
    done = WorkUnitCompleted(event_id="c", occurred_at=5, work_unit_id="a", accepted=True,
                             selected_node_id="n1", attempt_index=1,
                             settlement_reason="grant_holder", submitted_at=1000,
                             finished_at=3000)
    refused = done.model_copy(update={"event_id": "r", "accepted": False})
    failed = WorkUnitFailed(event_id="f", occurred_at=5, work_unit_id="b", error_code="x",
                            final=True)
    retry = WorkUnitAttemptFailed(event_id="f2", occurred_at=5, work_unit_id="b",
                                  error_code="x", retryable=True)
    item = LedgerLineItem(event_id="l", occurred_at=5, work_unit_id="a", tenant_id="acme",
                          line_item_id="l", source_event_id="s", source_event_type="x",
                          line_item_type="llm_tokens", total_usd=Decimal("0.25"),
                          pricing_version="v1", model="m1", llm_tokens_in=30,
                          llm_tokens_out=12)
    sensor.on_facts("scheduler", [done, refused, failed, retry])
    held = LedgerChargeHeld(event_id="h", occurred_at=4, work_unit_id="a", tenant_id="acme",
                            source_event_id="s", source_event_type="llm.invocation.completed",
                            provider="openai", model="m1")
    sensor.on_facts("ledger", [held, item, item.model_copy(update={"billed": False})])
    sensor.on_facts("scheduler", [QueueSampled(event_id="q", occurred_at=5, partition=1,
                                               queue=5, deferred=2, throttled=1, running=4)])
    sensor.on_batch("scheduler", 10, 4, 0.01)
    sensor.on_partitions("scheduler", {("workunits", 0): 7, ("workunits", 1): 0},
                         {0: 4096, 1: 1024})
    window = CapacityWindowClosed(event_id="w", occurred_at=5, window_start=0, window_end=5,
                                  replicas=3, mode="THROTTLED", queue_depth=12)
    sensor.on_facts("capacity", [window])
    text = generate_latest(sensor.registry).decode()
    assert samples(text, "onceflow_consumer_lag") == {
        (("partition", "0"), ("processor", "scheduler"), ("topic", "workunits")): 7.0,
        (("partition", "1"), ("processor", "scheduler"), ("topic", "workunits")): 0.0}
    assert samples(text, "onceflow_state_bytes")[
        (("partition", "0"), ("processor", "scheduler"))] == 4096
    assert samples(text, "onceflow_capacity_replicas") == {(): 3.0}
    assert samples(text, "onceflow_admission_mode") == {
        (("mode", "OPEN"),): 0.0, (("mode", "THROTTLED"),): 1.0, (("mode", "CRITICAL"),): 0.0}
    assert samples(text, "onceflow_units_settled_total") == {
        (("state", "completed"),): 1.0, (("state", "failed"),): 1.0}
    assert samples(text, "onceflow_submit_to_settled_seconds_sum") == {(): 2.0}
    assert samples(text, "onceflow_line_items_total") == {
        (("billed", "true"), ("type", "llm_tokens")): 1.0,
        (("billed", "false"), ("type", "llm_tokens")): 1.0}
    assert samples(text, "onceflow_spend_usd_total") == {
        (("model", "m1"), ("provider", "openai"), ("tenant", "acme")): 0.25}
    assert samples(text, "onceflow_llm_tokens_total")[
        (("direction", "out"), ("model", "m1"), ("provider", "openai"), ("tenant", "acme"))
    ] == 12
    assert samples(text, "onceflow_units_in_flight") == {
        (("partition", "1"), ("state", "deferred")): 2.0,
        (("partition", "1"), ("state", "scheduled_or_retrying")): 3.0,
        (("partition", "1"), ("state", "throttled")): 1.0,
        (("partition", "1"), ("state", "running")): 4.0}
    assert samples(text, "onceflow_events_in_total") == {(("processor", "scheduler"),): 10.0}


@pytest.mark.integration
def test_every_roles_metrics_after_a_burst_match_the_ledger(settings: OnceflowSettings) -> None:
    fast = fast_settings(settings).model_copy(update={"metrics_port": 0,
                                                      "metrics_interval_ms": 500})
    create_topics(fast)
    roles = start_roles(fast, agent_specs(2, concurrency=4, region="eu-west"), billing=True,
                        trust=True, autoscaler=True, views_port=free_port())
    n = 300
    try:
        submit_units(fast, [unit(f"m-{i:04d}", simulated_ms=1) for i in range(n)])
        ready = Path(fast.stack_dir) / "ready"
        urls = {p.name.removesuffix(".metrics"): p.read_text().strip()
                for p in ready.glob("*.metrics")}
        assert set(urls) == {"scheduler", "billing", "trust", "autoscaler", "views",
                             "agent-n1", "agent-n2"}

        def scrape(role: str) -> str:
            return httpx.get(urls[role], timeout=10).text

        def billed_cpu() -> float:
            return samples(scrape("billing"), "onceflow_line_items_total").get(
                (("billed", "true"), ("type", "workunit_cpu")), 0.0)

        wait_for(lambda: samples(scrape("scheduler"), "onceflow_units_settled_total").get(
            (("state", "completed"),)) == n, timeout=60, what="every unit settled, as counted")
        wait_for(lambda: billed_cpu() == n, timeout=60, what="every unit billed, as counted")
        records = read_billing_records(fast, invocations=False)
        assert billed_cpu() == sum(1 for li in records.line_items
                                   if li.billed and li.line_item_type == "workunit_cpu")
        spent = sum(samples(scrape("billing"), "onceflow_spend_usd_total").values())
        assert spent == pytest.approx(float(sum(li.total_usd for li in records.line_items
                                                if li.billed)))
        scheduler = scrape("scheduler")
        assert samples(scheduler, "onceflow_submit_to_settled_seconds_count") == {(): n}
        assert samples(scheduler, "onceflow_events_in_total")[(("processor", "scheduler"),)] >= n
        # the agents ran every unit (a unit is run again only when its claim was lost)
        ran = sum(v for node in ("agent-n1", "agent-n2") for labels, v in samples(
            scrape(node), "onceflow_agent_attempts_total").items()
            if ("outcome", "completed") in labels)
        assert ran >= n
        breakers = samples(scrape("trust"), "onceflow_breaker_state")
        assert set(breakers) == {(("node", "n1"),), (("node", "n2"),)}
        # Caught up, the scheduler is behind on no partition of its inputs, and its state
        # is on disk.
        parts = fast.partitions

        def scheduler_lag() -> dict[tuple[tuple[str, str], ...], float]:
            return {k: v for k, v in samples(scrape("scheduler"), "onceflow_consumer_lag")
                    .items() if ("processor", "scheduler") in k}
        lag = wait_for(lambda: (lag := scheduler_lag()) and len(
            {dict(k)["partition"] for k in lag}) == parts and all(
            v == 0 for v in lag.values()) and lag, timeout=30,
            what="the scheduler's lag on every partition, at zero")
        assert {dict(k)["topic"] for k in lag} >= {fast_topic(fast, "submissions")}
        # (the limiter beside it in the same process reports its own, labelled so)
        sizes = {k: v for k, v in samples(scrape("scheduler"), "onceflow_state_bytes").items()
                 if ("processor", "scheduler") in k}
        assert len(sizes) == parts and all(v > 0 for v in sizes.values())
        # The views read every line item; the autoscaler decided its windows.
        views_read = wait_for(lambda: samples(scrape("views"), "onceflow_events_in_total").get(
            (("processor", "views-sink"),), 0) >= len(records.line_items) and samples(
            scrape("views"), "onceflow_events_in_total"), timeout=30,
            what="the views to count every line item")
        assert views_read
        views_lag = wait_for(lambda: (v := samples(scrape("views"), "onceflow_consumer_lag"))
                             and all(x == 0 for x in v.values()) and v, timeout=30,
                             what="the views' lag, at zero")
        assert {dict(k)["topic"] for k in views_lag} == {fast_topic(fast, "ledger")}
        wait_for(lambda: samples(scrape("autoscaler"), "onceflow_events_in_total"),
                 timeout=30, what="the autoscaler to count what it read")
        wait_for(lambda: samples(scrape("autoscaler"), "onceflow_capacity_replicas"),
                 timeout=60, what="the autoscaler's first window")
    finally:
        stop_roles(roles)
