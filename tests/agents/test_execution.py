"""The execution core end to end on the real broker: scheduler plus node agents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from onceflow.schemas import (
    LlmInvocationCompleted,
    SingleObjectCodec,
    WorkUnitCompleted,
    WorkUnitScheduled,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import read_topic_to_end
from onceflow.streams.runtime import fingerprint_partitions, replay_facts
from onceflow.streams.scheduler import Scheduler, Streak, rank_recorded
from onceflow.streams.state import open_partition_store
from onceflow.streams.topics import TopicCatalog
from tests.agents.fixtures import Cluster, effect_rows, fast_settings, unit
from tests.fixtures import event_messages

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    c = Cluster(fast_settings(settings))
    yield c
    c.close()


def _facts(settings: OnceflowSettings) -> list[tuple[object, int]]:
    codec = SingleObjectCodec()
    return [(codec.decode(m.value()), m.partition() or 0)
            for m in event_messages(settings, TopicCatalog(settings)["workunits"].name)]


def test_two_agents_racing_for_the_same_dispatch_execute_it_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Two runs of node n1 read the same dispatch partition and both claim
    # every unit; only the run holding the grant may act.
    cluster.start_scheduler()
    a = cluster.start_agent("n1", concurrency=4)
    b = cluster.start_agent("n1", concurrency=4)
    assert a.incarnation != b.incarnation
    db = tmp_path / "effects.sqlite"
    ids = [f"race-{i}" for i in range(60)]
    cluster.submit(*(unit(i, kind="tool", effect="WORLD_MUTATING", simulated_ms=5,
                          parameters={"db": str(db)}) for i in ids))
    states = cluster.wait_settled(ids)
    assert set(states.values()) == {"completed"}
    rows = effect_rows(db)
    assert all(rows[i] == 1 for i in ids), {i: rows[i] for i in ids if rows[i] != 1}
    assert a.executed + b.executed == len(ids)
    accepted = cluster.progress().progress.accepted_completions
    assert all(accepted[i] == 1 for i in ids)


def test_the_same_unit_submitted_twice_runs_once(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1")
    db = tmp_path / "effects.sqlite"
    first = unit("dup-1", kind="tool", effect="WORLD_MUTATING", parameters={"db": str(db)})
    again = first.model_copy(update={"event_id": "another-event-id"})
    cluster.submit(first, again)
    cluster.wait_settled(["dup-1"])
    conflicting = unit("dup-1", kind="tool", effect="WORLD_MUTATING", simulated_ms=7,
                       parameters={"db": str(db)})
    cluster.submit(conflicting)
    facts = []
    from tests.fixtures import wait_for

    def rejected() -> bool:
        facts[:] = [f for f, _ in _facts(cluster.settings)]
        return any(getattr(f, "reason_code", "") == "duplicate_id_different_payload"
                   for f in facts)

    wait_for(rejected, timeout=30, what="the conflicting submission's rejection")
    assert effect_rows(db)["dup-1"] == 1
    scheduled = [f for f in facts if isinstance(f, WorkUnitScheduled)]
    assert len(scheduled) == 1


def test_llm_units_emit_invocations_and_cpu_units_carry_results(cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1", region="eu-west")
    cluster.start_agent("n2", region="us-east")
    llm = [unit(f"llm-{i}", kind="llm_pod", prompt="x" * (40 + i), model="stub-1")
           for i in range(10)]
    cpu = [unit(f"cpu-{i}", simulated_ms=2, region="us-east") for i in range(10)]
    cluster.submit(*llm, *cpu)
    states = cluster.wait_settled([u.work_unit_id or "" for u in llm + cpu])
    assert set(states.values()) == {"completed"}
    codec = SingleObjectCodec()
    invocations = [codec.decode(m.value() or b"") for m in read_topic_to_end(
        cluster.settings, TopicCatalog(cluster.settings)["llm"].name)]
    assert len(invocations) == 10
    for inv in invocations:
        assert isinstance(inv, LlmInvocationCompleted)
        n = int(inv.work_unit_id.split("-")[1])  # type: ignore[union-attr]
        assert inv.tokens_in == -(-(40 + n) // 4)
        assert inv.total_tokens == inv.tokens_in + inv.tokens_out
        assert inv.provider == "stub" and inv.estimated_cost_usd > 0
    completions = [f for f, _ in _facts(cluster.settings)
                   if isinstance(f, WorkUnitCompleted) and f.accepted]
    assert all(c.result_ref is not None for c in completions)
    # region enters every cpu unit's decision: 1 for the us-east node, 0 for the other
    seen = [{c.node_id: c.region for c in d.candidates}
            for d in (f for f, _ in _facts(cluster.settings) if isinstance(f, WorkUnitScheduled))
            if (d.work_unit_id or "").startswith("cpu")]
    assert {"n1": 0.0, "n2": 1.0} in seen
    assert all(s.get("n1", 0.0) == 0.0 and s.get("n2", 1.0) == 1.0 for s in seen)


def test_a_child_runs_after_its_parents_with_their_results(cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1")
    parents = [unit(f"parent-{i}", handler="sha256", parameters={"text": f"p{i}"})
               for i in range(3)]
    child = unit("child", handler="sha256", depends_on=[p.work_unit_id for p in parents])
    cluster.submit(child, *parents)  # the child first: it must wait
    cluster.wait_settled(["child"])
    facts = [f for f, _ in _facts(cluster.settings)]
    child_sched = [f for f in facts if isinstance(f, WorkUnitScheduled)
                   and f.work_unit_id == "child"]
    assert len(child_sched) == 1 and len(child_sched[0].parent_result_refs) == 3
    done_at = {f.work_unit_id: f.finished_at for f in facts
               if isinstance(f, WorkUnitCompleted) and f.accepted}
    assert all(done_at["child"] >= done_at[p.work_unit_id] for p in parents)


def test_replaying_the_facts_matches_the_live_scheduler_and_decisions_recheck(
    cluster: Cluster,
) -> None:
    cluster.start_scheduler()
    for n, region in (("n1", "eu-west"), ("n2", "us-east"), ("n3", "eu-west")):
        cluster.start_agent(n, region=region, concurrency=2)
    units = [unit(f"rp-{i}", simulated_ms=i % 3, region="eu-west" if i % 2 else None,
                  kind="llm_pod" if i % 5 == 0 else "cpu", prompt="hello")
             for i in range(150)]
    cluster.submit(*units)
    cluster.wait_settled([u.work_unit_id or "" for u in units])
    cluster.close()  # stop the scheduler: its RocksDB state is now final
    settings = cluster.settings
    live = {}
    for p in range(settings.partitions):
        store = open_partition_store(settings.state_dir, "scheduler", p)
        live[p] = list(store.raw_items())
        store.close()
    replayed = replay_facts(Scheduler(settings), settings,
                            TopicCatalog(settings)["workunits"].name, SingleObjectCodec())
    assert fingerprint_partitions({p: list(s.raw_items()) for p, s in replayed.items()}) == \
        fingerprint_partitions(live)
    by_unit = {u.work_unit_id: u for u in units}
    decisions = [f for f, _ in _facts(settings) if isinstance(f, WorkUnitScheduled)]
    assert len(decisions) >= len(units)
    for d in decisions:
        region = by_unit[d.work_unit_id].region
        assert rank_recorded(d.candidates, Streak(d.streak_node_id, d.streak_length), region,
                             settings.scheduler, recorded_reason=d.reason_code) == \
            (d.selected_node_id, d.reason_code)


def test_an_operator_resolves_a_parked_unit_from_the_cli(
    cluster: Cluster, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    cluster.start_scheduler()
    cluster.start_agent("n1")
    # The tool stages its effect, then fails: unsafe to retry, so it is parked.
    broken = {"db": "/proc/onceflow-no-such-dir/effects.sqlite"}
    cluster.submit(unit("parked", kind="tool", effect="WORLD_MUTATING", parameters=broken))
    assert cluster.wait_settled(["parked"]) == {"parked": "needs_operator"}
    result = tmp_path / "result.json"
    result.write_text('{"done": "by hand"}')
    env = {**subprocess_env, "ONCEFLOW_CONTENT_STORE_URL": cluster.settings.content_store_url,
           "ONCEFLOW_VIEWS_URL": cluster.cli_env()["ONCEFLOW_VIEWS_URL"]}
    out = subprocess.run([sys.executable, "-m", "onceflow.infra.cli", "resolve", "parked", "--action",
                          "mark_done", "--result-file", str(result), "--note", "checked"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from tests.fixtures import wait_for

    wait_for(lambda: cluster.progress().progress.status.get("parked") == "completed",
             timeout=30, what="the operator's mark_done to settle the unit")
    done = [f for f, _ in _facts(cluster.settings)
            if isinstance(f, WorkUnitCompleted) and f.accepted and f.work_unit_id == "parked"]
    assert len(done) == 1 and done[0].settlement_reason == "operator_mark_done"
    assert done[0].result_ref is not None
    assert "work unit parked: mark_done" in out.stdout
    again = subprocess.run([sys.executable, "-m", "onceflow.infra.cli", "resolve", "parked",
                            "--action", "retry"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 1
    assert "not waiting for an operator (it is completed)" in again.stderr


def test_units_whose_leases_ended_in_the_queue_do_not_make_the_node_ask_for_more(
        cluster: Cluster) -> None:
    """A unit refused because its lease ended while it waited in the node's queue took no
    time to run, and must not count as one that ran: counted, units would look instant,
    the node would ask for a queue as long as its limit, and more leases would end in it
    (the spiral a loaded machine fell into)."""
    from onceflow.agents import NodeAgent
    from onceflow.schemas import ClaimGranted

    agent = NodeAgent(cluster.settings, node_id="n9", concurrency=4)
    try:
        before = agent.queue_target()
        for i in range(50):
            scheduled = WorkUnitScheduled(
                event_id=f"sched-{i}", occurred_at=1, tenant_id="acme",
                execution_session_id="s1", work_unit_id=f"late-{i}", selected_node_id="n9",
                attempt_index=1, score=1.0, eligible_node_count=1, reason_code="best_score",
                scheduling_epoch=1, decided_at=1, lease_expires_at=2)
            grant = ClaimGranted(event_id=f"grant-{i}", occurred_at=1, tenant_id="acme",
                                 execution_session_id="s1", work_unit_id=f"late-{i}",
                                 node_id="n9", attempt_index=1, lease_expires_at=2,
                                 incarnation=agent.incarnation)
            agent._inflight += 1  # as the grant's arrival counts it
            agent._execute(scheduled, grant)
        agent.producer.flush()
        assert agent.queue_target() == before
    finally:
        agent.producer.flush()
