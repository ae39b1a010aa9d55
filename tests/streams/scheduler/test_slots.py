"""Concurrency slots in the scheduler: ask before placing, give back on every way out."""

from __future__ import annotations

from onceflow.schemas import (
    ControlSessionCancelRequested,
    Event,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotRequested,
    WorkUnitAttemptFailed,
    WorkUnitFailed,
    WorkUnitScheduled,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import LimitsSettings
from onceflow.streams.types import Routed
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)


def _harness() -> Harness:
    h = Harness(settings=OnceflowSettings(limits=LimitsSettings(tenant_concurrency=5)))
    h.see(heartbeat("n1"))
    return h


def _grant(wu: str, at: int, attempt: int = 1) -> SlotGranted:
    return SlotGranted(event_id=f"slot-{wu}-{attempt}-{at}", occurred_at=at, work_unit_id=wu,
                       tenant_id="acme", attempt_index=attempt, scopes=["tenant:acme"])


def _requested(facts: list[Event]) -> SlotRequested:
    (req,) = [f for f in facts if isinstance(f, SlotRequested)]
    return req


def _released(facts: list[Event]) -> list[SlotReleased]:
    return [f for f in facts if isinstance(f, SlotReleased)]


def _running(h: Harness, wu: str) -> tuple[str, int]:
    req = _requested(h.feed(submit(wu)))
    placed = h.feed(_grant(wu, T0 + 1, req.attempt_index))
    sched = placed[-1]
    assert isinstance(sched, WorkUnitScheduled), placed
    h.claim(wu, sched.selected_node_id, sched.attempt_index, at=T0 + 2)
    return sched.selected_node_id, sched.attempt_index


def test_a_limited_unit_asks_the_limiter_first_and_is_placed_on_its_grant() -> None:
    h = _harness()
    facts = h.feed(submit("wu-1"))
    req = _requested(facts)
    assert req.scopes == ["tenant:acme"] and req.attempt_index == 1
    assert h.unit("wu-1").status == "waiting_for_slot"
    to_limiter = [o for o in h.outputs if isinstance(o, Routed) and o.event is req]
    assert to_limiter and to_limiter[0].topic.endswith("limits") and to_limiter[0].partition == 0
    placed = h.feed(_grant("wu-1", T0 + 1))
    assert isinstance(placed[-1], WorkUnitScheduled)
    assert h.unit("wu-1").slots
    assert h.feed(_grant("wu-1", T0 + 2)) == []  # a grant seen again changes nothing


def test_a_queued_request_is_recorded_with_the_scope_count_and_limit() -> None:
    h = _harness()
    h.feed(submit("wu-1"))
    queued = SlotQueued(event_id="q-1", occurred_at=T0 + 1, work_unit_id="wu-1",
                        tenant_id="acme", attempt_index=1, scopes=["tenant:acme"],
                        scope="tenant:acme", in_use=5, limit=5)
    (recorded,) = h.feed(queued)
    assert isinstance(recorded, SlotQueued) and recorded.in_use == 5 and recorded.limit == 5
    assert h.unit("wu-1").reason == "concurrency_limited"
    assert h.tick(T0 + 60_000) == []  # waiting for the limiter, not for the clock


def test_a_unit_without_a_limited_scope_never_waits() -> None:
    h = Harness()
    h.see(heartbeat("n1"))
    assert isinstance(h.feed(submit("wu-1"))[-1], WorkUnitScheduled)


def test_completion_gives_the_slots_back_with_the_settlement_routed_to_the_limiter() -> None:
    h = _harness()
    node, attempt = _running(h, "wu-1")
    before = len(h.outputs)
    facts = h.complete("wu-1", node, attempt, at=T0 + 10)
    assert not _released(facts)  # no fact of its own: the unit is done
    (routed,) = [o for o in h.outputs[before:] if isinstance(o, Routed)
                 and isinstance(o.event, SlotReleased)]
    assert routed.topic.endswith("limits") and routed.partition == 0
    assert routed.event.reason == "completed" and routed.event.work_unit_id == "wu-1"
    # the same completion routes the same release: a limiter dedupes a re-sent one by id
    assert routed.event.event_id == h.scheduler.route(facts[0])[-1].event.event_id


def test_a_failed_attempt_gives_them_back_and_its_retry_asks_again() -> None:
    h = _harness()
    node, attempt = _running(h, "wu-1")
    facts = h.fail("wu-1", node, attempt, "network_transient", at=T0 + 10)
    assert [r.reason for r in _released(facts)] == ["attempt_ended"]
    retry_at = h.unit("wu-1").retry_at
    again = _requested(h.tick(retry_at))
    assert again.attempt_index == attempt + 1


def test_a_lease_that_runs_out_gives_them_back() -> None:
    h = _harness()
    _running(h, "wu-1")
    facts = h.tick(h.unit("wu-1").deadline)
    assert any(isinstance(f, WorkUnitAttemptFailed) for f in facts)
    assert [r.reason for r in _released(facts)] == ["attempt_ended"]


def test_a_final_failure_gives_them_back() -> None:
    h = _harness()
    node, attempt = _running(h, "wu-1")
    facts = h.fail("wu-1", node, attempt, "handler_error", at=T0 + 10)
    assert any(isinstance(f, WorkUnitFailed) and f.final for f in facts)
    assert [r.reason for r in _released(facts)] == ["attempt_ended"]


def test_cancelling_a_waiting_unit_gives_its_queue_place_back() -> None:
    h = _harness()
    h.feed(submit("wu-1"))
    facts = h.feed(ControlSessionCancelRequested(
        event_id="cancel-1", occurred_at=T0 + 5, work_unit_id="wu-1", tenant_id="acme",
        reason="not needed", requested_by="ops"))
    assert [r.reason for r in _released(facts)] == ["cancelled"]
    assert h.feed(_grant("wu-1", T0 + 6)) == []  # a late grant does not place it


def test_an_unclaimed_dispatch_is_placed_again_with_the_same_slots() -> None:
    h = _harness()
    req = _requested(h.feed(submit("wu-1")))
    sched = h.feed(_grant("wu-1", T0 + 1, req.attempt_index))[-1]
    assert isinstance(sched, WorkUnitScheduled)
    facts = h.tick(sched.lease_expires_at)
    assert isinstance(facts[-1], WorkUnitScheduled) and not _released(facts)
    assert not [f for f in facts if isinstance(f, SlotRequested)]


def test_replay_with_slots_equals_the_live_state() -> None:
    h = _harness()
    node, attempt = _running(h, "wu-1")
    h.complete("wu-1", node, attempt, at=T0 + 10)
    _running(h, "wu-2")
    h.feed(submit("wu-3"))
    assert_replay_equals_live(h)


def test_a_request_carries_the_units_priority_and_billings_estimate_as_its_fair_share() -> None:
    h = _harness()
    req = _requested(h.feed(submit("wu-1", simulated_ms=2000, priority="p1")))
    assert req.priority == "p1"
    expected = h.scheduler.ctx.estimator.estimate(h.unit("wu-1").spec)  # type: ignore[union-attr]
    assert req.cost == float(expected) and req.cost > 0


def test_a_grant_with_a_rate_turn_later_defers_the_unit_until_then_holding_its_slots() -> None:
    h = _harness()
    h.feed(submit("wu-1"))
    turn = T0 + 20_000
    grant = _grant("wu-1", T0 + 1).model_copy(
        update={"not_before": turn, "rate_levels": {"rpm:tenant:acme": -1.0}})
    (deferred,) = h.feed(grant)
    assert (deferred.reason_code, deferred.retry_at) == ("rate_limited", turn)  # type: ignore[attr-defined]
    assert h.unit("wu-1").slots and h.unit("wu-1").status == "deferred"
    assert h.tick(turn - 1) == []  # not its turn yet
    placed = h.tick(turn)
    assert isinstance(placed[0], WorkUnitScheduled)
    assert not [f for f in placed if isinstance(f, SlotRequested)]  # it asks nothing again
    assert_replay_equals_live(h)
