"""Reads over a long history: the read model's answers with 1,000 units of history beside
the same with many (100,000 in a CI-sized run, a million at `--scale 10`).

The history is written straight to the topics as a finished run leaves it
(each unit submitted, placed, granted, completed and billed; its session's and
tenant's wallets), so seeding costs what the broker takes, not hours of work.
The read model then folds it as the views service does (its ingest rate beside
a plain consumer's rate over the same records), and the figures the issue asks
for are taken over its HTTP API, the dashboard's snapshot, `onceflow status` as a
whole process, and a `Client` from opening to its first result.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from onceflow.schemas import (
    ClaimGranted,
    ContentRef,
    LedgerLineItem,
    SingleObjectCodec,
    WalletUpdated,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitScheduled,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.topics import TopicCatalog, create_topics

__all__ = ["history_rates"]

T0 = 1_800_000_000_000
#: units a session has in the seeded history (one more session has 50, the one read)
STEPS_PER_SESSION = 100
WAITING_APPROVAL = 20


def _seed(settings: OnceflowSettings, units: int, ref: ContentRef) -> dict[str, Any]:
    """Write `units` settled units' facts (in sessions of 100, plus one of 50 steps), their
    line items and wallets, and a few units waiting for an approval (the inbox)."""
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    wu_topic, ledger, wallets = catalog["workunits"], catalog["ledger"], catalog["wallets"]
    began = time.perf_counter()
    charged: dict[str, Decimal] = {}
    records = 0
    for i in range(units):
        session = f"s{i // STEPS_PER_SESSION:06d}" if i >= 50 else "read-me"
        tenant = f"t{i % 10}"
        wu, at = f"u{i:08d}", T0 + i
        common: dict[str, Any] = {"tenant_id": tenant, "execution_session_id": session,
                                  "work_unit_id": wu}
        for event in (
            WorkUnitSubmitted(event_id=f"sub-{wu}", occurred_at=at, kind="cpu", **common),
            WorkUnitScheduled(event_id=f"sch-{wu}", occurred_at=at + 1, attempt_index=1,
                              selected_node_id="n1", score=1.0, eligible_node_count=1,
                              reason_code="best_score", scheduling_epoch=1, decided_at=at + 1,
                              lease_expires_at=at + 30_000, **common),
            ClaimGranted(event_id=f"gr-{wu}", occurred_at=at + 2, attempt_index=1,
                         node_id="n1", lease_expires_at=at + 30_000, **common),
            WorkUnitCompleted(event_id=f"done-{wu}", occurred_at=at + 3, attempt_index=1,
                              selected_node_id="n1", accepted=True,
                              settlement_reason="grant_holder", result_ref=ref, **common),
        ):
            producer.send(wu_topic, event)
        price = Decimal("0.001")
        producer.send(ledger, LedgerLineItem(
            event_id=f"li-{wu}", occurred_at=at + 4, line_item_id=f"li-{wu}",
            source_event_id=f"done-{wu}", source_event_type="workunit.completed",
            line_item_type="workunit_cpu", total_usd=price, pricing_version="bench",
            **common))
        charged[tenant] = charged.get(tenant, Decimal("0")) + price
        records += 5
        if i % 10_000 == 9_999:
            producer.flush()
    for tenant, total in sorted(charged.items()):
        producer.send(wallets, WalletUpdated(
            event_id=f"w-{tenant}", occurred_at=T0 + units + 10, tenant_id=tenant,
            execution_session_id="", wallet_id=f"tenant:{tenant}@0", scope="tenant",
            balance_usd=-total, total_debit_usd=total, total_credit_usd=Decimal("0"),
            record_count=units // 10, ledger_partition=0))
        records += 1
    for j in range(WAITING_APPROVAL):
        wu = f"ask-{j:03d}"
        common = {"tenant_id": "t0", "execution_session_id": "asks", "work_unit_id": wu}
        producer.send(wu_topic, WorkUnitSubmitted(event_id=f"sub-{wu}", occurred_at=T0 + j,
                                                  kind="cpu", requires_approval=True,
                                                  **common))
        producer.send(wu_topic, WorkUnitDeferred(
            event_id=f"def-{wu}", occurred_at=T0 + j + 1, reason_code="awaiting_approval",
            reason="approve it", **common))
        records += 2
    producer.flush(300)
    return {"units": units, "records": records,
            "seed_s": round(time.perf_counter() - began, 1)}


def _raw_consume(settings: OnceflowSettings, records: int) -> float:
    """A plain consumer's rate over the same topics (records a second)."""
    catalog = TopicCatalog(settings)
    consumer = Consumer(settings.consumer_config(None))
    names = [catalog[t].name for t in ("workunits", "ledger", "wallets")]
    consumer.assign([TopicPartition(n, p, 0) for n in names
                     for p in range(catalog["workunits"].partitions if n != catalog[
                         "wallets"].name else catalog["wallets"].partitions)])
    got = 0
    began = time.perf_counter()
    while got < records:
        got += len([m for m in consumer.consume(10_000, 1.0) if m.error() is None])
    rate = got / (time.perf_counter() - began)
    consumer.close()
    return rate


def _timed(fn: Any, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 2),
            "requests": n}


def _one_history(broker: str, work: Path, units: int) -> dict[str, Any]:
    import uvicorn

    from onceflow.infra.api import create_api
    from onceflow.infra.broker import free_port
    from onceflow.infra.client import Client, Step
    from onceflow.infra.dashboard import Dashboard
    from onceflow.infra.readmodel import ReadModelFeed
    from onceflow.streams.content import open_content_store

    home = work / f"history-{units}"
    settings = OnceflowSettings(bootstrap_servers=broker, partitions=3,
                                topic_prefix=f"bench.h{units}.", state_dir=home / "state",
                                content_store_url=f"file://{home / 'content'}")
    create_topics(settings)
    ref = open_content_store(settings).put(b"the result of every seeded unit")
    seeded = _seed(settings, units, ref)
    raw = _raw_consume(settings, seeded["records"])
    began = time.perf_counter()
    feed = ReadModelFeed(settings).start()
    while not feed.caught_up.is_set():
        time.sleep(0.05)  # the bench's own wait for the fold of the whole history
    ingest_s = time.perf_counter() - began
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(settings, feed=feed), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, headers={"X-Onceflow-Tenant": "system"}, timeout=30)
    step = max(1, units // 500)
    picks = iter(range(0, units * 1000, step))

    def get_unit() -> None:
        i = next(picks) % units
        assert http.get(f"/v1/units/u{i:08d}").status_code == 200

    out: dict[str, Any] = {**seeded,
                           "read_model_ingest_records_per_s": round(seeded["records"]
                                                                    / ingest_s),
                           "raw_consume_records_per_s": round(raw)}
    out["ingest_ratio_to_raw_consume"] = round(out["read_model_ingest_records_per_s"] / raw, 3)
    get_unit()  # the first request opens the connection
    out["get_unit"] = _timed(get_unit, 500)
    out["get_session_50_steps"] = _timed(
        lambda: http.get("/v1/sessions/read-me", params={"owner": "t0"}).raise_for_status(),
        200)
    out["inbox"] = _timed(lambda: http.get("/v1/inbox").raise_for_status(), 200)
    dashboard = Dashboard(settings, feed)
    out["dashboard_snapshot"] = _timed(
        lambda: dashboard._compute(feed.reader(), int(time.time() * 1000)), 50)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ONCEFLOW_")},
           **settings.to_env(), "ONCEFLOW_BROKER_PROFILE": "cluster",
           "ONCEFLOW_VIEWS_URL": url}
    status = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onceflow.infra.cli", "status", "--format",
                        "json"], env=env, check=True, capture_output=True, timeout=60)
        status.append(time.perf_counter() - t)
    out["onceflow_status_process_s"] = round(statistics.median(status), 3)
    opened = []
    for n in range(5):
        t = time.perf_counter()
        with Client(settings, views_url=url) as client:
            handle = client.submit(Step.cpu(f"u{(n * 7919) % units:08d}", handler="sha256"),
                                   tenant="t0")
            assert handle.result(timeout=30) == b"the result of every seeded unit"
        opened.append((time.perf_counter() - t) * 1000)
    out["client_open_to_first_result_ms"] = round(statistics.median(opened), 1)
    http.close()
    server.should_exit = True
    thread.join(10)
    feed.close()
    return out


def history_rates(broker: str, work: Path, units: int) -> dict[str, Any]:
    """The same reads with 1,000 units of history and with `units`, and their ratios."""
    small = _one_history(broker, work, 1_000)
    large = _one_history(broker, work, units)
    ratios = {}
    for name in ("get_unit", "get_session_50_steps", "inbox", "dashboard_snapshot"):
        ratios[f"{name}_p99"] = round(large[name]["p99_ms"] / max(small[name]["p99_ms"], 0.01),
                                      2)
    for name in ("onceflow_status_process_s", "client_open_to_first_result_ms"):
        ratios[name] = round(large[name] / max(small[name], 0.001), 2)
    targets_met = {
        "get_unit_p99_le_10_ms": large["get_unit"]["p99_ms"] <= 10,
        "get_session_50_steps_le_20_ms": large["get_session_50_steps"]["p99_ms"] <= 20,
        "inbox_le_20_ms": large["inbox"]["p99_ms"] <= 20,
        "dashboard_snapshot_le_100_ms": large["dashboard_snapshot"]["p99_ms"] <= 100,
        "onceflow_status_lt_1_s": large["onceflow_status_process_s"] < 1,
        "client_open_to_first_result_lt_200_ms": large["client_open_to_first_result_ms"]
        < 200,
    }
    return {"history_1000": small, f"history_{units}": large,
            "ratio_large_to_small": ratios, "targets_met": targets_met,
            "note": "each figure with 1,000 units of history and with many; a ratio near 1 "
                    "means a read does not grow with history. p50/p99 over the requests "
                    "shown, over HTTP on this machine (client and server in one process)."}
