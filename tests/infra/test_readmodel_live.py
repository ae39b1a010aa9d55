"""The read model on a live stack: killed with SIGKILL mid-burst and started again, it ends
with exactly the rows of one built from the log from scratch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from onceflow.infra.broker import free_port
from onceflow.infra.readmodel import ReadModelFeed
from onceflow.infra.readmodel._impl.feed import LAYOUT, READ_TOPICS
from onceflow.infra.roles import start_roles, stop_roles
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import make_consumer, watermarks
from onceflow.streams.state.rocksdb import open_partition_store
from onceflow.streams.topics import TopicCatalog
from tests.agents.fixtures import Cluster, fast_settings, unit
from tests.fixtures import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

UNITS = 600


def _rows(state_dir: Path) -> list[tuple[str, Any]]:
    store = open_partition_store(state_dir, "readmodel", 0, layout=LAYOUT)
    try:
        return list(store.snapshot().items(""))
    finally:
        store.close()


def _log_end(settings: OnceflowSettings) -> dict[str, int]:
    catalog = TopicCatalog(settings)
    probe = make_consumer(settings, None)
    try:
        return {f"{catalog[r].name}:{p}": watermarks(probe, catalog[r].name, p)[1]
                for r in READ_TOPICS for p in range(catalog[r].partitions)}
    finally:
        probe.close()


def test_killed_mid_burst_and_started_again_it_holds_the_rows_of_one_built_from_the_log(
        settings: OnceflowSettings, tmp_path: Path) -> None:
    port = free_port()
    fast = fast_settings(settings).model_copy(update={
        "views_url": f"http://127.0.0.1:{port}", "state_dir": tmp_path / "state"})
    cluster = Cluster(fast)
    cluster.start_scheduler()
    cluster.start_billing()
    for n in ("n1", "n2"):
        cluster.start_agent(n)
    views = start_roles(fast, [], scheduler=False, views_port=port)
    url = f"{fast.views_url}/v1"
    acme = {"X-Onceflow-Tenant": "acme"}
    try:
        units = [unit(f"b-{i:04d}", simulated_ms=2).model_copy(
            update={"execution_session_id": f"s{i // 10:03d}"}) for i in range(UNITS)]
        cluster.submit(*units)
        wait_for(lambda: cluster.progress().progress.settled() >= UNITS // 4, timeout=120,
                 what="the burst under way")
        (process,) = views
        os.kill(process.pid, signal.SIGKILL)
        process.process.wait(timeout=10)
        views = start_roles(fast, [], scheduler=False, views_port=port)
        cluster.wait_settled([u.work_unit_id or "" for u in units], timeout=180)

        def billed() -> bool:
            wallet = httpx.get(f"{url}/wallet", headers=acme, timeout=30)
            return wallet.status_code == 200 and wallet.json()["line_items"] >= UNITS

        wait_for(billed, timeout=120, what="every unit billed, as the read model says")
    finally:
        cluster.close()  # the log is quiet from here: no role writes
    try:
        end = _log_end(fast)

        def caught_up() -> bool:
            position = httpx.get(f"{url}/read-model", timeout=30).json()["position"]
            return all(position.get(tp, 0) >= high for tp, high in end.items())

        wait_for(caught_up, timeout=60, what="the restarted read model at the log's end")
        by_state = httpx.get(f"{url}/status", headers={"X-Onceflow-Tenant": "system"},
                             timeout=30).json()["units"]["by_state"]
        assert by_state == {"completed": UNITS}
    finally:
        stop_roles(views)
    fresh = ReadModelFeed(fast, state_dir=tmp_path / "fresh")
    try:
        while not fresh.caught_up.is_set():
            fresh.step(0.2)
    finally:
        fresh.close()
    restarted = _rows(tmp_path / "state" / "members" / "views")  # the member's own
    rebuilt = _rows(tmp_path / "fresh")
    assert len(restarted) > UNITS * 5
    assert restarted == rebuilt
