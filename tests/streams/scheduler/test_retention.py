"""Bounded state: settled units are forgotten a retention horizon after their last
decision, by a fact, so that replay forgets the same ones; what they can no longer answer
(a redelivered submission) is refused rather than run twice."""

from __future__ import annotations

from onceflow.schemas import StateRetired, WorkUnitRejected, WorkUnitScheduled, WorkUnitSubmitted
from onceflow.settings import OnceflowSettings, SchedulerSettings
from onceflow.streams.scheduler import UnitRecord
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)

HORIZON = 60_000


def _harness(horizon: int = HORIZON, per_tick: int = 1000) -> Harness:
    h = Harness(settings=OnceflowSettings(
        retention_horizon_ms=horizon, scheduler=SchedulerSettings(retired_per_tick=per_tick)))
    h.see(heartbeat("n1", at=T0, available=64))
    return h


def _run(h: Harness, wu: str, at: int) -> None:
    facts = h.feed(submit(wu, at=at))
    assert isinstance(facts[-1], WorkUnitScheduled)
    h.claim(wu, facts[-1].selected_node_id, 1, at=at + 1)
    h.complete(wu, facts[-1].selected_node_id, 1, at=at + 2)
    assert h.unit(wu).status == "completed"


def _retired(h: Harness) -> list[str]:
    return [wu for f in h.outputs if isinstance(f, StateRetired) for wu in f.work_unit_ids]


def test_a_settled_unit_is_kept_for_the_horizon_then_forgotten_by_a_fact() -> None:
    h = _harness()
    _run(h, "wu-1", T0)
    settled_at = h.unit("wu-1").decided_at
    assert [k for k, _ in h.state.items("x:settled:")] == [
        f"x:settled:{settled_at:013d}:wu-1"]
    h.see(heartbeat("n1", at=T0 + HORIZON, available=64))
    h.tick(settled_at + HORIZON - 1)
    assert _retired(h) == [] and h.unit("wu-1").status == "completed"
    h.see(heartbeat("n1", at=T0 + HORIZON + 10, available=64))
    h.tick(settled_at + HORIZON + 10)
    assert _retired(h) == ["wu-1"]
    assert UnitRecord.load(h.state, "wu-1") is None
    assert [k for k, _ in h.state.items("x:")] == []  # no index entry left behind
    assert_replay_equals_live(h)


def test_a_redelivered_submission_of_a_forgotten_unit_is_refused_not_run_again() -> None:
    h = _harness()
    _run(h, "wu-1", T0)
    h.tick(T0 + 2 * HORIZON)
    assert _retired(h) == ["wu-1"]
    again = h.feed(submit("wu-1", at=T0))  # the same event, delivered again
    assert len(again) == 1 and isinstance(again[0], WorkUnitRejected)
    assert again[0].reason_code == "beyond_horizon"
    assert "submit it again as a new event" in again[0].reason
    assert UnitRecord.load(h.state, "wu-1") is None
    # a new submission of the id, made now, is a new unit (a workflow id reused after
    # retention, as Temporal has it)
    h.see(heartbeat("n1", at=T0 + 2 * HORIZON, available=64))
    fresh = h.feed(submit("wu-1", at=T0 + 2 * HORIZON + 5))
    assert isinstance(fresh[0], WorkUnitSubmitted) and isinstance(fresh[-1], WorkUnitScheduled)
    assert_replay_equals_live(h)


def test_units_that_have_not_settled_are_never_forgotten() -> None:
    h = _harness()
    h.feed(submit("parked", at=T0, kind="tool", effect="WORLD_MUTATING"))
    sched = [f for f in h.outputs if isinstance(f, WorkUnitScheduled)][-1]
    granted = h.claim("parked", sched.selected_node_id, 1, at=T0 + 1)
    h.stage("parked", sched.selected_node_id, 1, at=T0 + 2)
    h.tick(granted[0].lease_expires_at)  # type: ignore[attr-defined]
    assert h.unit("parked").status == "needs_operator"
    h.feed(submit("waiting", at=T0, depends_on=["parked"]))
    h.tick(T0 + 10 * HORIZON)
    assert "parked" not in _retired(h) and "waiting" not in _retired(h)
    assert h.unit("parked").status == "needs_operator"
    assert h.unit("waiting").status == "waiting"


def test_a_tick_forgets_at_most_its_share_and_the_next_goes_on_oldest_first() -> None:
    h = _harness(per_tick=3)
    for i in range(7):
        _run(h, f"wu-{i}", T0 + 10 * i)
    h.tick(T0 + 2 * HORIZON)
    assert _retired(h) == ["wu-0", "wu-1", "wu-2"]
    h.tick(T0 + 2 * HORIZON + 1)
    h.tick(T0 + 2 * HORIZON + 2)
    assert _retired(h) == [f"wu-{i}" for i in range(7)]
    assert [f.inputs_until for f in h.outputs if isinstance(f, StateRetired)] == sorted(
        f.inputs_until for f in h.outputs if isinstance(f, StateRetired))
    assert_replay_equals_live(h)


def test_a_horizon_of_zero_keeps_every_unit_for_ever() -> None:
    h = _harness(horizon=0)
    _run(h, "wu-1", T0)
    h.tick(T0 + 10**12)
    assert _retired(h) == [] and h.unit("wu-1").status == "completed"
    assert [k for k, _ in h.state.items("x:settled:")] == []


def test_once_it_has_forgotten_something_a_quiet_partition_says_so_once_a_step() -> None:
    h = _harness()
    h.tick(T0 + 3 * HORIZON)
    assert [f for f in h.outputs if isinstance(f, StateRetired)] == []  # nothing yet
    _run(h, "wu-1", T0 + 3 * HORIZON)
    h.tick(T0 + 5 * HORIZON)
    h.tick(T0 + 5 * HORIZON + 1)  # the same step: nothing more to say
    step = HORIZON // 16
    h.tick(T0 + 5 * HORIZON + step)
    said = [f for f in h.outputs if isinstance(f, StateRetired)]
    assert [f.work_unit_ids for f in said] == [["wu-1"], []]
    assert_replay_equals_live(h)
