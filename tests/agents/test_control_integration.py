"""Operator controls on a live stack: pause and resume a running session, cancel one whose
steps are in flight (the agents stop them), each through `onceflow pause | resume | cancel`."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceflow.schemas import (
    ClaimGranted,
    ControlApplied,
    ControlRequested,
    SingleObjectCodec,
    WorkUnitAttemptStopped,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitFailureReported,
    WorkUnitScheduled,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import LimitsSettings
from tests.agents.fixtures import Cluster, effect_rows, fast_settings, unit
from tests.fixtures import event_messages, events, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    c = Cluster(fast_settings(settings))
    yield c
    c.close()


def run_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onceflow", *args, "--format", "json"],
                          env=cluster.cli_env(), capture_output=True,
                          text=True, timeout=60)


def cli_json(cluster: Cluster, *args: str) -> Any:
    done = run_cli(cluster, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def onceflow(cluster: Cluster, *args: str) -> dict[str, Any]:
    done = run_cli(cluster, *args)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def test_a_session_paused_mid_run_is_granted_nothing_until_it_is_resumed(
        settings: OnceflowSettings) -> None:
    # at most 6 of the session's steps at once, so most of it is still queued when paused
    cluster = Cluster(fast_settings(settings).model_copy(update={
        "limits": LimitsSettings(session_concurrency=6)}))
    try:
        _pause_and_resume(cluster)
    finally:
        cluster.close()


def _pause_and_resume(cluster: Cluster) -> None:
    cluster.start_scheduler()
    for node in ("n1", "n2", "n3"):
        cluster.start_agent(node, kinds=("cpu",), concurrency=2)
    steps = [unit(f"step-{i:03d}", simulated_ms=150, lease_ms=5000) for i in range(200)]
    ids = [s.work_unit_id or "" for s in steps]
    cluster.submit(*steps)

    def completed() -> int:
        status = cluster.progress().progress.status
        return sum(1 for i in ids if status.get(i) == "completed")

    wait_for(lambda: completed() >= 6, timeout=60, what="the session to be under way")
    # sent straight from here, so it lands mid-run however slow a CLI start is today
    # (`onceflow pause` is the same command; resume and cancel below go through the CLI)
    pause = ControlRequested(event_id="pause-s1", occurred_at=int(time.time() * 1000),
                             tenant_id="acme", execution_session_id="s1", action="pause",
                             scope="session", requested_by="test", reason="inspect")
    cluster.producer.send(cluster.catalog["control"], pause)
    cluster.producer.flush()
    wait_for(lambda: len([e for e in events(cluster.settings, cluster.catalog["workunits"].name)
                          if isinstance(e, ControlApplied) and e.control_id == "pause-s1"])
             == cluster.catalog["reports"].partitions, timeout=30,
             what="every partition to apply the pause")

    def quiet() -> bool:
        # What ran has finished, and the rest waits, paused. The steps queued at the limiter
        # reach the pause one grant at a time (granted, deferred `paused`, the slot given
        # back, the next granted), so that drain is over only when every step not done is
        # deferred: none still scheduled, running, or waiting for its slot (`submitted`).
        status = cluster.progress().progress.status
        return all(status.get(i) in ("completed", "deferred") for i in ids)

    wait_for(quiet, timeout=60, what="the running steps to finish while paused")
    at_pause = completed()
    assert at_pause < 200  # the pause held work back
    (listed,) = cli_json(cluster, "sessions", "--tenant", "acme")
    assert (listed["session_id"], listed["state"], listed["steps"]) == ("s1", "paused", 200)
    resumed = onceflow(cluster, "resume", "--session", "s1", "--tenant", "acme")
    assert sum(r["resumed"] for r in resumed["records"]) == 200 - at_pause
    status = cluster.wait_settled(ids, timeout=120)
    assert set(status.values()) == {"completed"}
    print(f"pause: {at_pause} of 200 done when paused; all 200 after the resume")
    shown = cli_json(cluster, "session", "show", "s1", "--tenant", "acme")
    assert shown["state"] == "completed" and len(shown["dag"]) == 200
    assert {s["state"] for s in shown["dag"]} == {"completed"}
    why = [f["event_type"] for f in cli_json(cluster, "why", "step-199")]
    assert why[0] == "workunit.submitted" and why[-1] == "workunit.completed"
    assert "workunit.scheduled" in why
    whole = cli_json(cluster, "why", "--session", "s1", "--tenant", "acme")
    assert Counter(f["action"] for f in whole if f["event_type"] == "control.applied") == {
        "pause": 3, "resume": 3}
    # the live view of an ended session shows it and returns
    watched = subprocess.run([sys.executable, "-m", "onceflow", "watch", "s1", "--tenant",
                              "acme"], env=cluster.cli_env(),
                             capture_output=True, text=True, timeout=60)
    assert watched.returncode == 0 and "session acme/s1: completed" in watched.stdout
    # In each partition's log, nothing of the session was granted between its pause and its
    # resume: the order in the log is the record.
    codec = SingleObjectCodec()
    state: dict[int, str] = {}
    for msg in event_messages(cluster.settings, cluster.catalog["workunits"].name):
        fact = codec.decode(msg.value())
        p = msg.partition()
        if isinstance(fact, ControlApplied):
            state[p] = fact.action
        elif isinstance(fact, ClaimGranted):
            assert state.get(p) != "pause", f"{fact.work_unit_id} granted while paused"


def test_cancelling_a_running_session_stops_its_steps_on_the_agents(cluster: Cluster) -> None:
    cluster.start_scheduler()
    for node in ("n1", "n2"):
        cluster.start_agent(node, kinds=("cpu",), concurrency=2)
    steps = [unit(f"long-{i}", simulated_ms=20_000, lease_ms=30_000) for i in range(6)]
    ids = [s.work_unit_id or "" for s in steps]
    cluster.submit(*steps)
    def running() -> int:
        status = cluster.progress().progress.status
        return sum(1 for i in ids if status.get(i) == "running")

    # the agents claim what they are sent: four run, the others wait in their pools
    wait_for(lambda: running() >= 4, timeout=60, what="four steps to run")
    out = onceflow(cluster, "cancel", "--session", "s1", "--tenant", "acme",
                   "--reason", "runaway")
    records = out["records"]
    stopping = sum(r["stopping"] for r in records)
    assert stopping >= 4 and stopping + sum(r["cancelled"] for r in records) == 6
    assert {r["requested_by"] for r in records} == {getpass.getuser()}
    status = cluster.wait_settled(ids, timeout=10)  # far sooner than the 20 s they'd run
    assert set(status.values()) == {"cancelled"}
    # the agents stopped the four handlers early and said so; nothing was accepted
    wait_for(lambda: sum(1 for e in events(cluster.settings, cluster.catalog["reports"].name)
                         if isinstance(e, WorkUnitFailureReported)
                         and e.error_code == "cancelled")
             == stopping, timeout=10, what="the agents to report each stopped handler")
    # and the scheduler recorded each stop once, as what it is
    wait_for(lambda: sum(1 for e in events(cluster.settings, cluster.catalog["workunits"].name)
                         if isinstance(e, WorkUnitAttemptStopped)) == stopping,
             timeout=10, what="the scheduler to record each stopped attempt")
    settled = [e for e in events(cluster.settings, cluster.catalog["workunits"].name)
               if isinstance(e, WorkUnitCompleted)]
    assert not any(e.accepted for e in settled)
    wait_for(lambda: all(a.snapshot()["running"] == 0 for a in cluster.agents), timeout=10,
             what="the agents' handlers to stop")
    # what cannot be done is refused in one line, and the refusal is on the log
    again = run_cli(cluster, "cancel", "--session", "s1", "--tenant", "acme")
    assert again.returncode == 1
    assert "no unit of session:acme/s1 that is not done" in again.stderr
    unpaused = run_cli(cluster, "resume", "--tenant", "acme")
    assert unpaused.returncode == 1 and "refused: tenant:acme is not paused" in unpaused.stderr
    refusals = [e for e in events(cluster.settings, cluster.catalog["workunits"].name)
                if isinstance(e, ControlApplied) and e.outcome == "refused"]
    assert {r.detail for r in refusals} == {"tenant:acme is not paused"}


def test_a_cancel_bills_the_work_done_before_it_and_accepts_nothing_after(
        cluster: Cluster) -> None:
    """An LLM call in flight and a long CPU step, cancelled: the agents stop them, nothing
    is accepted, and the ledger bills what they spent before the cancel (the call's tokens,
    the CPU each ran) while a result reported afterwards would be leakage."""
    from decimal import Decimal

    from onceflow.agents import OpenAICompatibleProvider
    from onceflow.billing import read_billing_records
    from tests.agents.fixtures import ChatServer

    server = ChatServer()
    # the provider thinks until the cancel has been applied: then it answers, after the
    # cancel (the client waits up to 60 s, longer than any loaded machine needs)
    server.hold = threading.Event()
    try:
        cluster.start_scheduler()
        cluster.start_billing()
        cluster.start_agent("n1", kinds=("llm_pod",), concurrency=1,
                            provider=OpenAICompatibleProvider(server.url, "sk-test", "gpt-test",
                                                              60.0, Decimal("0.002")))
        cluster.start_agent("n2", kinds=("cpu",), concurrency=1)
        think = unit("think", kind="llm_pod", prompt="plan the migration in ten steps",
                     model="gpt-test", lease_ms=90_000)
        count = unit("count", simulated_ms=60_000, lease_ms=90_000)
        cluster.submit(think, count)
        wait_for(lambda: server.in_flight == 1 and cluster.progress().progress.status.get(
            "count") == "running", timeout=30, what="the call in flight and the step running")
        out = onceflow(cluster, "cancel", "--session", "s1", "--tenant", "acme",
                       "--reason", "wrong plan")
        assert sum(r["stopping"] for r in out["records"]) == 2
        assert set(cluster.wait_settled(["think", "count"], timeout=30).values()) == {
            "cancelled"}
        # the call has lasted 2 s at least when the provider answers (its CPU is billed)
        wait_for(lambda: time.monotonic() - server.requests[0]["at"] >= 2.0, timeout=5,
                 interval=0.05, what="the call to have lasted 2 s")
        server.hold.set()

        def items() -> list[Any]:
            return [li for li in read_billing_records(cluster.settings,
                                                      invocations=False).line_items
                    if li.work_unit_id in ("think", "count")]

        # the call's tokens (spent: the provider answered after the cancel) and the CPU of
        # both stopped attempts are billed; nothing was accepted
        wait_for(lambda: {(li.work_unit_id, li.line_item_type) for li in items()
                          if li.billed} == {("think", "llm_tokens"), ("think", "workunit_cpu"),
                                            ("count", "workunit_cpu")},
                 timeout=30, what="the ledger to bill the work done before the cancel")
        billed = {(li.work_unit_id, li.line_item_type): li for li in items()}
        assert billed[("think", "llm_tokens")].llm_tokens > 0
        assert billed[("count", "workunit_cpu")].cpu_seconds > 0
        assert billed[("think", "workunit_cpu")].cpu_seconds >= Decimal("2")  # it waited
        settled = [e for e in events(cluster.settings, cluster.catalog["workunits"].name)
                   if isinstance(e, WorkUnitCompleted)]
        assert not any(e.accepted for e in settled)
        shown = onceflow(cluster, "session", "show", "s1", "--tenant", "acme")
        assert shown["state"] == "cancelled" and Decimal(shown["cost_usd"]) == sum(
            (li.total_usd for li in items() if li.billed), Decimal(0))
    finally:
        server.hold.set()
        server.close()


def test_approvals_run_what_is_approved_and_fail_closed_what_is_not(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1", kinds=("tool",), concurrency=2)
    db = tmp_path / "effects.sqlite"

    def tool(wu: str, timeout_ms: int) -> Any:
        return unit(wu, kind="tool", effect="WORLD_MUTATING", parameters={"db": str(db)},
                    requires_approval=True, approval_timeout_ms=timeout_ms)

    cluster.submit(tool("send-ok", 120_000), tool("send-no", 120_000),
                   tool("send-late", 1_000))
    def waiting() -> set[str]:
        return {i["work_unit_id"] for i in inbox(cluster) if i["kind"] == "approval"}

    # (the late one may have failed already: its deadline is short)
    wait_for(lambda: waiting() >= {"send-ok", "send-no"}, timeout=30,
             what="the approvals to reach the inbox")
    approved = onceflow(cluster, "approve", "send-ok", "--reason", "looks right")
    assert approved["records"][0]["outcome"] == "applied"
    onceflow(cluster, "deny", "send-no", "--reason", "wrong customer")
    status = cluster.wait_settled(["send-ok", "send-no", "send-late"], timeout=30)
    assert status == {"send-ok": "completed", "send-no": "failed", "send-late": "failed"}
    assert effect_rows(db) == {"send-ok": 1}  # nothing applied for the others
    failures = {e.work_unit_id: e.error_code
                for e in events(cluster.settings, cluster.catalog["workunits"].name)
                if isinstance(e, WorkUnitFailed) and e.final}
    assert failures == {"send-no": "approval_denied", "send-late": "approval_expired"}
    assert inbox(cluster) == []  # resolved items leave the inbox
    twice = run_cli(cluster, "approve", "send-ok")
    assert twice.returncode == 1 and "work unit send-ok is already done" in twice.stderr


def inbox(cluster: Cluster) -> list[dict[str, Any]]:
    done = run_cli(cluster, "inbox")
    assert done.returncode == 0, done.stderr
    items: list[dict[str, Any]] = json.loads(done.stdout)
    return items


def test_an_input_step_answered_from_the_cli_hands_its_answer_to_the_next_step(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1", kinds=("cpu",), concurrency=2)
    schema = json.dumps({"type": "object", "required": ["region"],
                         "properties": {"region": {"type": "string"}}})
    ask = unit("ask", kind="input", prompt="Which region?", parameters={"schema": schema},
               approval_timeout_ms=120_000)
    use = unit("use", handler="sha256", depends_on=["ask"])
    cluster.submit(ask, use)
    wait_for(lambda: [i["kind"] for i in inbox(cluster)] == ["input"], timeout=30,
             what="the input step to wait in the inbox")
    bad = tmp_path / "bad.json"
    bad.write_text('{"zone": 1}')
    refused = run_cli(cluster, "input", "s1", "ask", "--tenant", "acme", "--file", str(bad))
    assert refused.returncode == 2
    assert "does not fit the step's schema" in refused.stderr and "region" in refused.stderr
    # the refusal is on the log too, and the step still waits

    def recorded_refusal() -> list[ControlApplied]:
        return [f for f in events(cluster.settings, cluster.catalog["workunits"].name)
                if isinstance(f, ControlApplied) and f.action == "answer"
                and f.outcome == "refused"]

    wait_for(recorded_refusal, timeout=30, what="the refused answer recorded on the log")
    assert "does not fit its schema" in recorded_refusal()[0].detail
    assert [i["kind"] for i in inbox(cluster)] == ["input"]
    good = tmp_path / "answer.json"
    good.write_text('{"region": "eu-west"}')
    out = cli_json(cluster, "input", "s1", "ask", "--tenant", "acme", "--file", str(good))
    assert out["records"][0]["outcome"] == "applied"
    assert cluster.wait_settled(["ask", "use"], timeout=30) == {"ask": "completed",
                                                                "use": "completed"}
    facts = events(cluster.settings, cluster.catalog["workunits"].name)
    (placed,) = [f for f in facts if isinstance(f, WorkUnitScheduled)
                 and f.work_unit_id == "use"]
    assert [r.sha256 for r in placed.parent_result_refs] == [out["answer_ref"]["sha256"]]
    assert inbox(cluster) == []
