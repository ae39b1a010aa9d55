"""The CLI against a local stack it starts itself: up, submit, tail, status, down."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from onceflow.infra.stack import pid_alive
from onceflow.settings import OnceflowSettings
from onceflow.streams.topics import TopicCatalog
from tests.fixtures import wait_for
from tests.infra.fixtures import onceflow, stack_env

pytestmark = pytest.mark.integration


_onceflow = onceflow


#: generated units the end-to-end test runs (throughput is the benchmark's to measure)
UNITS = 1500


def test_up_submit_tail_down(tmp_path: Path) -> None:
    env = stack_env(tmp_path, agents=2)
    up = _onceflow(["up", "--agents", "2"], env)
    assert "scheduler running" in up.stdout and "agent-n2 running" in up.stdout
    # every batched role serves its /metrics, and up says where
    assert {line.split()[0] for line in up.stdout.splitlines()
            if "metrics at http://127.0.0.1:" in line} == {"scheduler", "billing", "trust",
                                                           "autoscaler", "views",
                                                           "agent-n1", "agent-n2"}
    stack = json.loads((tmp_path / "stack" / "stack.json").read_text())
    assert set(stack["processes"]) == {"scheduler", "billing", "trust", "views", "autoscaler",
                                       "fleet", "agent-n1", "agent-n2"}
    assert stack["views_url"].startswith("http://127.0.0.1:")
    try:
        assert pid_alive(stack["broker_pid"])
        again = _onceflow(["up", "--agents", "2"], env)
        assert "already running" in again.stdout
        out = _onceflow(["submit", "--count", str(UNITS), "--quiet"], env)
        assert f"submitted {UNITS} work units" in out.stdout
        one = _onceflow(["submit", "--work-unit-id", "wu-explicit", "--kind", "llm_pod",
                         "--prompt", "hello", "--model", "stub"], env)
        assert "wu-explicit" in one.stdout
        tail = _onceflow(["tail", "submissions", "--format", "json"], env)
        rows = [json.loads(line) for line in tail.stdout.splitlines()]
        assert len(rows) == UNITS + 1
        assert {r["event_type"] for r in rows} == {"workunit.submitted"}
        assert any(r["work_unit_id"] == "wu-explicit" and r["kind"] == "llm_pod" for r in rows)
        def status() -> dict:
            return json.loads(_onceflow(["status", "--format", "json"], env).stdout)

        final = wait_for(lambda: (s := status())["units"].get("by_state") == {"completed": UNITS + 1}
                         and s, timeout=150, interval=1.0, what="every unit completed")
        assert final["broker"]["alive"] and all(t["exists"] for t in final["topics"])
        assert {n["node_id"] for n in final["nodes"]} == {"n1", "n2"}
        assert all(n["health"] == "healthy" for n in final["nodes"])
        assert sum(final["units"]["completed_by_node"].values()) == UNITS + 1

        def wallet() -> dict:
            out = _onceflow(["ledger", "wallet", "tenant-demo", "--format", "json"], env,
                            check=False)
            return json.loads(out.stdout) if out.returncode == 0 else {}

        # a CPU line item per unit and the one invocation's tokens
        billed = wait_for(lambda: (w := wallet()).get("line_items") == UNITS + 2 and w,
                          timeout=60, interval=1.0, what="every unit billed")
        assert Decimal(billed["debit_usd"]) > 0 and billed["prepaid"] is False
        items = [json.loads(line) for line in _onceflow(
            ["ledger", "tail", "--format", "json"], env).stdout.splitlines()]
        assert len(items) == UNITS + 2
        assert sum((Decimal(i["total_usd"]) for i in items), Decimal("0")) == \
            Decimal(billed["debit_usd"])
        assert [i["model"] for i in items if i["line_item_type"] == "llm_tokens"] == ["stub"]
        verify = _onceflow(["replay", "billing", "--verify", "--format", "json"], env)
        assert all(r["equal"] for r in json.loads(verify.stdout))
        def wallet_view() -> list[dict]:
            out = _onceflow(["ledger", "query", "SELECT * FROM wallet_balance;",
                             "--format", "json"], env)
            return json.loads(out.stdout)

        (row,) = wait_for(lambda: (rows := wallet_view()) and rows[0]["line_items"] == UNITS + 2
                          and rows, timeout=60, interval=1.0, what="the views to catch up")
        assert Decimal(row["charged_usd"]) == Decimal(billed["debit_usd"])
        views = json.loads(_onceflow(["ledger", "views", "--format", "json"], env).stdout)
        assert {"WALLET_BALANCE", "LEDGER"} <= {v["name"] for v in views}
        refused = _onceflow(["ledger", "query", "DELETE FROM ledger;"], env, check=False)
        assert refused.returncode == 2 and "not supported" in refused.stderr
        clean = _onceflow(["anomalies", "--reconcile", "--fail-on-flag"], env, check=False)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        unknown = _onceflow(["ledger", "wallet", "nobody"], env, check=False)
        assert unknown.returncode == 1 and "tenant-demo" in unknown.stderr
    finally:
        _onceflow(["down"], env)
    assert not pid_alive(stack["broker_pid"]), "down must leave no process behind"
    assert not any(pid_alive(p) for p in stack["processes"].values())
    assert not (tmp_path / "stack" / "stack.json").exists()
    # Up again in the same place: the same data, nothing run or billed again.
    again_up = _onceflow(["up", "--agents", "2"], env, check=False)
    try:
        assert again_up.returncode == 0, again_up.stderr[-2000:]
        assert "0 created" in again_up.stdout and "autoscaler running" in again_up.stdout
        after = status()
        assert after["units"]["by_state"] == {"completed": UNITS + 1}
        assert after["units"]["completed_by_node"] == final["units"]["completed_by_node"]
        assert after["units"]["rejected_completions"] == 0
        assert wallet()["line_items"] == UNITS + 2
        items_after = _onceflow(["ledger", "tail", "--format", "json"], env).stdout.splitlines()
        assert len(items_after) == UNITS + 2
        for role in ("billing", "scheduler"):
            verify = _onceflow(["replay", role, "--verify", "--format", "json"], env)
            assert all(r["equal"] for r in json.loads(verify.stdout)), role
        refused = _onceflow(["up", "--fresh"], env, check=False)
        assert refused.returncode == 2 and "onceflow down" in refused.stderr
    finally:
        _onceflow(["down"], env)
    # --fresh wipes the broker's data and the roles' state, and says so.
    fresh = _onceflow(["up", "--agents", "1", "--fresh"], env, check=False)
    try:
        assert fresh.returncode == 0, fresh.stderr[-2000:]
        assert "wiped" in fresh.stdout
        assert f"{len(TopicCatalog(OnceflowSettings()).all())} created" in fresh.stdout
        assert status()["units"]["by_state"] == {}
    finally:
        _onceflow(["down"], env)


def test_bad_input_names_the_problem_and_fails(tmp_path: Path) -> None:
    env = {**os.environ, "ONCEFLOW_STACK_DIR": str(tmp_path / "stack")}
    bad_priority = _onceflow(["submit", "--priority", "p9"], env, check=False)
    assert bad_priority.returncode == 2
    assert "priority" in bad_priority.stderr and "p0" in bad_priority.stderr
    missing = _onceflow(["submit", "--file", str(tmp_path / "nope.json")], env, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    broken = _onceflow(["submit", "--file", str(bad_json)], env, check=False)
    assert broken.returncode == 2 and "not valid JSON" in broken.stderr
    cycle = tmp_path / "cycle.json"
    cycle.write_text('{"work_unit_id": "a", "depends_on": ["a"]}')
    looped = _onceflow(["submit", "--file", str(cycle)], env, check=False)
    assert looped.returncode == 2 and "a depends on itself" in looped.stderr
    assert len(looped.stderr.strip().splitlines()) == 1
    env["ONCEFLOW_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    no_broker = _onceflow(["submit"], env, check=False)
    assert no_broker.returncode == 2 and "onceflow up" in no_broker.stderr
