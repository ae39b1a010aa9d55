"""Several members per role, as processes: partitions move between live members under
load, a frozen member is fenced, every role restarts member by member, and the active
limiter dies. Each test ends with the same account: every unit settled once and billed
once, no anomaly, and every role's live state equal to a replay of its facts."""

from __future__ import annotations

import os
import signal
import time

import pytest

from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import WorkUnitSubmitted
from onceflow.settings import LimitsSettings, OnceflowSettings
from onceflow.streams.topics import TopicCatalog, create_topics
from tests.agents.fixtures import fast_settings, unit
from tests.fixtures import submit_units, wait_for
from tests.streams.fixtures import (
    assert_exactly_once,
    fact_records,
    log_events,
    members_of,
    owners,
    sigkill,
    wait_members,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _burst(n: int, prefix: str, **fields: object) -> list[WorkUnitSubmitted]:
    fields.setdefault("simulated_ms", 1)
    return [unit(f"{prefix}-{i}", **fields) for i in range(n)]  # type: ignore[arg-type]


def _completed_at_least(settings: OnceflowSettings, n: int) -> None:
    """Wait until `n` units have completed (the burst is under way, not over)."""
    from onceflow.infra.observe import ProgressFollower

    follower = ProgressFollower(settings, only=frozenset({"workunit.completed"}))
    try:
        def enough() -> bool:
            follower.poll()
            return follower.progress.by_state().get("completed", 0) >= n

        wait_for(enough, timeout=120, interval=0.1, what=f"{n} completions")
    finally:
        follower.close()


def test_the_scheduler_scales_from_one_member_to_three_and_back_mid_burst(
        settings: OnceflowSettings) -> None:
    fast = fast_settings(settings).model_copy(update={"transactions": True})
    create_topics(fast)
    group = "scheduler"
    roles = start_roles(fast, agent_specs(3, concurrency=8, region="eu-west"), billing=True,
                        trust=True)
    try:
        units = _burst(3000, "scale")
        submit_units(fast, units)
        _completed_at_least(fast, 300)
        added = start_roles(fast, [], billing=False, members={"scheduler": 3},
                            names=["scheduler-2", "scheduler-3"])
        roles += added
        three = wait_members(fast, group, {"scheduler", "scheduler-2", "scheduler-3"},
                             fast.partitions)
        assert all(len(ps) == 1 for ps in three.values()), three
        _status_shows_members(fast, three)
        _completed_at_least(fast, 1500)
        stop_roles(added)
        wait_members(fast, group, {"scheduler"}, fast.partitions)
        states = assert_exactly_once(fast, units)
        assert states["completed"] == len(units), states
        # each added member decided for the partition it was given, then gave it up
        for role in added:
            assert log_events(role, "partition.recovered"), f"{role.name} restored nothing"
        writers = {r.member for r in fact_records(fast, TopicCatalog(fast)["workunits"].name)}
        assert {"scheduler", "scheduler-2", "scheduler-3"} <= writers, writers
    finally:
        stop_roles(roles)


def _status_shows_members(settings: OnceflowSettings, members: dict[str, list[int]]) -> None:
    """`onceflow status`, run against the cluster as an operator would, lists the
    scheduler's members and the partitions each owns (as JSON and as its table)."""
    import json
    import subprocess
    import sys

    env = {**os.environ, **settings.to_env(), "ONCEFLOW_BROKER_PROFILE": "cluster"}

    def status(*fmt: str) -> str:
        done = subprocess.run([sys.executable, "-m", "onceflow", "status", *fmt], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    groups = {g["group"]: g for g in json.loads(status("--format", "json"))["members"]}
    shown = {m["member"]: m["partitions"] for m in groups["scheduler"]["members"]}
    # a member is listed while the group settles after a join: the same owners as asked
    assert shown == members, (shown, members)
    table = status()
    assert "members" in table and all(name in table for name in members), table


def test_a_frozen_scheduler_member_is_fenced_and_nothing_it_writes_after_is_visible(
        settings: OnceflowSettings) -> None:
    fast = fast_settings(settings).model_copy(update={"transactions": True})
    create_topics(fast)
    group = "scheduler"
    roles = start_roles(fast, agent_specs(2, concurrency=8, region="eu-west"), billing=True,
                        trust=True, members={"scheduler": 2})
    try:
        wait_members(fast, group, {"scheduler", "scheduler-2"}, fast.partitions)
        units = _burst(800, "freeze")
        submit_units(fast, units)
        _completed_at_least(fast, 200)
        frozen = next(r for r in roles if r.name == "scheduler-2")
        before = members_of(fast, group)["scheduler-2"]
        os.kill(frozen.pid, signal.SIGSTOP)
        frozen_at = time.time() * 1000
        try:
            # the group moves on after the member's session ends (6 s on the local broker)
            wait_members(fast, group, {"scheduler"}, fast.partitions, timeout=60)
            _completed_at_least(fast, 400)  # the other member decides for its partitions
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        wait_for(lambda: log_events(frozen, "partitions.lost")
                 or log_events(frozen, "member.fenced"), timeout=60,
                 what="the resumed member to learn it was fenced")
        rejoined = wait_for(
            lambda: [e for e in log_events(frozen, "partitions.assigned")
                     if _ms(e["timestamp"]) > frozen_at], timeout=60,
            what="the fenced member to join again")
        rejoined_at = _ms(rejoined[0]["timestamp"])
        states = assert_exactly_once(fast, units)
        assert states["completed"] == len(units), states
    finally:
        stop_roles(roles)
    # Nothing the frozen member wrote between its eviction and its rejoining is visible:
    # on each partition it owned, once the other member wrote there, its next visible
    # fact is one it made after it joined again.
    taken_over = dict.fromkeys(before, False)
    for record in fact_records(fast, TopicCatalog(fast)["workunits"].name):
        if record.partition not in taken_over:
            continue
        if record.member == "scheduler" and record.timestamp_ms >= frozen_at:
            taken_over[record.partition] = True
        elif record.member == "scheduler-2" and taken_over[record.partition]:
            assert record.timestamp_ms >= rejoined_at, (
                f"a fact the fenced member made at {record.timestamp_ms} is visible "
                f"(frozen at {frozen_at}, rejoined at {rejoined_at})")
    assert all(taken_over.values()), f"the other member never took over: {taken_over}"


def _ms(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def test_a_rolling_restart_of_every_role_under_load(settings: OnceflowSettings) -> None:
    fast = fast_settings(settings).model_copy(update={"transactions": True})
    create_topics(fast)
    members = {"scheduler": 2, "billing": 2, "trust": 2}
    roles = start_roles(fast, agent_specs(2, concurrency=8, region="eu-west"), billing=True,
                        trust=True, members=members)
    try:
        units = _burst(800, "roll")
        submit_units(fast, units)
        _completed_at_least(fast, 100)
        for name in ("scheduler", "scheduler-2", "billing", "billing-2", "trust", "trust-2"):
            old = next(r for r in roles if r.name == name)
            stop_roles([old])
            roles.remove(old)
            roles += start_roles(fast, [], billing=True, trust=True, members=members,
                                 names=[name])
        states = assert_exactly_once(fast, units)
        assert states["completed"] == len(units), states
    finally:
        stop_roles(roles)


def test_the_active_limiter_killed_while_units_wait_for_slots(
        settings: OnceflowSettings) -> None:
    fast = fast_settings(settings).model_copy(update={
        "limits": LimitsSettings(tenant_concurrency=4), "transactions": True})
    create_topics(fast)
    group = "limiter"
    roles = start_roles(fast, agent_specs(2, concurrency=8, region="eu-west"), billing=True,
                        trust=True, members={"limiter": 2})
    try:
        both = wait_for(lambda: (m := members_of(fast, group)) and len(m) == 2 and m,
                        timeout=60, what="two limiter members")
        active = next(name for name, ps in both.items() if ps)
        units = _burst(240, "slot", simulated_ms=20)
        submit_units(fast, units)
        _completed_at_least(fast, 40)  # units hold the tenant's 4 slots, the rest wait
        sigkill(next(r for r in roles if r.name == active))
        standby = ({"limiter", "limiter-2"} - {active}).pop()
        wait_for(lambda: owners(fast, group).get(0) == standby, timeout=60,
                 what="the standby limiter to take the partition")
        states = assert_exactly_once(fast, units, limiter=True)
        assert states["completed"] == len(units), states
    finally:
        stop_roles(roles)
