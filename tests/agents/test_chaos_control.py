"""SIGKILL the scheduler and an agent while a session is paused and a unit waits for its
approval: after the restart both are where they were, and both continue correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from onceflow.infra.broker import free_port
from onceflow.infra.observe import ProgressFollower
from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import ControlRequested
from onceflow.settings import OnceflowSettings
from onceflow.streams.scheduler import SETTLED_STATES
from onceflow.streams.topics import create_topics
from tests.agents.fixtures import effect_rows, fast_settings, unit
from tests.agents.test_chaos_agent import _sigkill
from tests.fixtures import submit_units, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def submit_control(settings: OnceflowSettings, command: ControlRequested) -> None:
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.kafka import EventProducer
    from onceflow.streams.topics import TopicCatalog

    producer = EventProducer(settings, SingleObjectCodec())
    producer.send(TopicCatalog(settings)["control"], command)
    producer.flush()


def _cli(settings: OnceflowSettings, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "onceflow", *args, "--format", "json"],
                          env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_paused_session_and_a_pending_approval_survive_a_scheduler_and_agent_kill(
        settings: OnceflowSettings, tmp_path: Path) -> None:
    fast = fast_settings(settings).model_copy(update={"limits": fast_settings(
        settings).limits.model_copy(update={"session_concurrency": 4})})
    create_topics(fast)
    fast = fast.model_copy(update={"views_url": f"http://127.0.0.1:{(port := free_port())}"})
    roles = start_roles(fast, agent_specs(2, concurrency=2, region="eu-west"),
                        views_port=port)  # the read model every CLI read asks
    db = tmp_path / "effects.sqlite"
    steps = [unit(f"s-{i:03d}", simulated_ms=100, lease_ms=5000) for i in range(100)]
    gated = unit("send", kind="tool", effect="WORLD_MUTATING", parameters={"db": str(db)},
                 requires_approval=True, approval_timeout_ms=600_000
                 ).model_copy(update={"execution_session_id": "s2"})
    follower = ProgressFollower(fast)

    def status() -> dict[str, str]:
        follower.poll()
        return follower.progress.status

    try:
        submit_units(fast, [*steps, gated])
        ids = [s.work_unit_id or "" for s in steps]

        def count(*states: str) -> int:
            now = status()
            return sum(1 for i in ids if now.get(i) in states)

        wait_for(lambda: count("completed") >= 8, timeout=60, what="the session under way")
        # straight from here, so it lands mid-run however slow a CLI start is under load
        submit_control(fast, ControlRequested(
            event_id="pause-s1", occurred_at=int(time.time() * 1000), tenant_id="acme",
            execution_session_id="s1", action="pause", scope="session", requested_by="test"))
        wait_for(lambda: count("scheduled", "running") == 0, timeout=60,
                 what="the session to be quiet")
        done_before = count("completed")
        _sigkill(roles, "scheduler")
        _sigkill(roles, "agent-n1")
        roles += start_roles(fast, [], scheduler=True)  # recovers by replaying its facts
        # the pause held through the restart: a new step of the session waits too
        late = unit("s-late", simulated_ms=5, lease_ms=5000)
        submit_units(fast, [late])
        wait_for(lambda: status().get("s-late") == "deferred", timeout=60,
                 what="the new step to be held by the pause after the restart")
        (listed,) = [s for s in _cli(fast, "sessions", "--tenant", "acme")
                     if s["session_id"] == "s1"]
        assert listed["state"] == "paused"
        assert [i["work_unit_id"] for i in _cli(fast, "inbox")] == ["send"]
        _cli(fast, "approve", "send")
        _cli(fast, "resume", "--session", "s1", "--tenant", "acme")
        everything = [*ids, "s-late", "send"]

        def settled() -> bool:
            now = status()
            return all(now.get(i) in SETTLED_STATES for i in everything)

        wait_for(settled, timeout=150, what="everything to finish after the resume")
        final = status()
    finally:
        follower.close()
        stop_roles(roles)
    assert {final[i] for i in everything} == {"completed"}
    assert done_before < 100
    assert effect_rows(db) == {"send": 1}


def test_a_session_being_cancelled_ends_cancelled_through_a_scheduler_and_agent_kill(
        settings: OnceflowSettings) -> None:
    """The cancel is sent and the scheduler and an agent running the session's steps are
    killed at once, before or while it is applied: after the restart every step ends
    cancelled (none completes, the long steps do not run out their 20 s), and the step
    that waited on them fails with them."""
    fast = fast_settings(settings)
    create_topics(fast)
    fast = fast.model_copy(update={"views_url": f"http://127.0.0.1:{(port := free_port())}"})
    roles = start_roles(fast, agent_specs(2, concurrency=2, region="eu-west"),
                        views_port=port)  # the read model every CLI read asks
    steps = [unit(f"c-{i}", simulated_ms=20_000, lease_ms=30_000) for i in range(6)]
    after = unit("c-after", simulated_ms=5, lease_ms=5000, depends_on=["c-0"])
    ids = [s.work_unit_id or "" for s in steps]
    follower = ProgressFollower(fast)

    def status() -> dict[str, str]:
        follower.poll()
        return follower.progress.status

    try:
        submit_units(fast, [*steps, after])
        wait_for(lambda: sum(status().get(i) == "running" for i in ids) >= 4, timeout=60,
                 what="four steps running on the two agents")
        started = time.monotonic()
        submit_control(fast, ControlRequested(
            event_id="cancel-s1", occurred_at=int(time.time() * 1000), tenant_id="acme",
            execution_session_id="s1", action="cancel", scope="session", requested_by="test",
            reason="runaway"))
        _sigkill(roles, "scheduler")
        _sigkill(roles, "agent-n1")
        roles += start_roles(fast, [agent_specs(1, concurrency=2, region="eu-west")[0]],
                             scheduler=True)
        everything = [*ids, "c-after"]
        wait_for(lambda: all(status().get(i) in SETTLED_STATES for i in everything),
                 timeout=60, what="the cancelled session to settle after the restart")
        took = time.monotonic() - started
        final = status()
        (listed,) = [s for s in _cli(fast, "sessions", "--tenant", "acme")
                     if s["session_id"] == "s1"]
    finally:
        follower.close()
        stop_roles(roles)
    assert {final[i] for i in ids} == {"cancelled"}
    assert final["c-after"] in ("cancelled", "failed")
    assert listed["state"] == "cancelled" and listed["cancelled_by"] == "test"
    assert took < 20  # stopped, not run out
