"""The scheduler's state machine, as a pure reducer fed lists of events."""

from __future__ import annotations

from decimal import Decimal

import pytest

from onceflow.schemas import (
    CapacityAdmissionModeChanged,
    ClaimGranted,
    ClaimRejected,
    ContentRef,
    ControlApplied,
    ControlOperatorResolved,
    SlotDenied,
    SlotGranted,
    SlotRequested,
    TrustScoreUpdated,
    WorkUnitAttemptFailed,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitResultReported,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
    WorkUnitSubmitted,
)
from onceflow.settings import BillingSettings, OnceflowSettings, SchedulerSettings
from onceflow.streams.ids import caused_by
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.scheduler import Scheduler, UnitRecord, retry_delay_ms
from onceflow.streams.state import MemoryState
from onceflow.streams.types import Routed
from tests.streams.scheduler.fixtures import T0, Harness, heartbeat, submit

REF = ContentRef(sha256="ab" * 32, size=3)


def ready(*nodes: str) -> Harness:
    h = Harness()
    h.see(*(heartbeat(n) for n in nodes or ("n1",)))
    return h


def run_to_grant(h: Harness, wu: str, **fields: object) -> tuple[str, int, int]:
    facts = h.feed(submit(wu, **fields))
    scheduled = [f for f in facts if isinstance(f, WorkUnitScheduled)]
    assert scheduled, facts
    node, attempt = scheduled[-1].selected_node_id, scheduled[-1].attempt_index
    granted = h.claim(wu, node, attempt, at=T0 + 10)
    assert isinstance(granted[0], ClaimGranted)
    return node, attempt, granted[0].lease_expires_at


# -- submit -------------------------------------------------------------------------------


def test_submit_schedules_with_a_decision_record() -> None:
    h = ready("n1", "n2")
    facts = h.feed(submit("wu-1"))
    assert [type(f) for f in facts] == [WorkUnitSubmitted, WorkUnitScheduled]
    sched = facts[1]
    assert isinstance(sched, WorkUnitScheduled)
    assert sched.attempt_index == 1 and sched.eligible_node_count == 2
    assert sched.reason_code == "best_score" and sched.scheduling_epoch == 1
    assert [c.node_id for c in sched.candidates] == ["n1", "n2"]
    assert sched.lease_expires_at == T0 + h.settings.scheduler.claim_timeout_ms
    routed = [o for o in h.outputs if isinstance(o, Routed)]
    assert len(routed) == 1 and routed[0].event.event_id == sched.event_id
    assert routed[0].event.candidates == []  # the node gets the work, not the record
    assert routed[0].partition == h.scheduler.ctx.dispatch.partition_of(sched.selected_node_id)


def test_same_unit_submitted_twice_runs_once() -> None:
    h = ready()
    first = h.feed(submit("wu-1", at=T0))
    again = h.feed(submit("wu-1", at=T0 + 5))  # a new event id, the same payload
    assert len(first) == 2 and again == []


def test_same_id_with_a_different_payload_is_rejected_and_the_first_kept() -> None:
    h = ready()
    h.feed(submit("wu-1", simulated_ms=5))
    facts = h.feed(submit("wu-1", at=T0 + 1, simulated_ms=9))
    assert len(facts) == 1 and isinstance(facts[0], WorkUnitRejected)
    assert facts[0].reason_code == "duplicate_id_different_payload"
    assert "new work_unit_id" in facts[0].reason
    assert h.unit("wu-1").status == "scheduled"
    assert h.unit("wu-1").spec.simulated_ms == 5


def test_no_eligible_node_defers_with_reason_and_counts_then_tick_places() -> None:
    h = Harness()
    h.see(heartbeat("gpu", kinds=("llm_pod",)))
    facts = h.feed(submit("wu-1"))
    deferred = facts[-1]
    assert isinstance(deferred, WorkUnitDeferred)
    assert deferred.reason_code == "no_eligible_node"
    assert deferred.filter_counts == {"unsupported_kind": 1}
    assert h.tick(T0 + 200) == []  # still nowhere to go: no new fact
    h.see(heartbeat("cpu1", at=T0 + 300))
    placed = h.tick(T0 + 400)
    assert len(placed) == 1 and isinstance(placed[0], WorkUnitScheduled)
    assert placed[0].selected_node_id == "cpu1"


# -- admission ---------------------------------------------------------------------------


def mode(new: str) -> CapacityAdmissionModeChanged:
    return CapacityAdmissionModeChanged(event_id=f"mode-{new}", occurred_at=T0,
                                        previous_mode="OPEN", new_mode=new,  # type: ignore[arg-type]
                                        reason="test")


@pytest.mark.parametrize(("priority", "outcome"), [
    ("p2", WorkUnitDeferred), ("p1", WorkUnitScheduled), ("p0", WorkUnitScheduled),
    ("critical", WorkUnitScheduled),
])
def test_throttled_defers_below_p1(priority: str, outcome: type) -> None:
    h = ready()
    h.see(mode("THROTTLED"))
    facts = h.feed(submit("wu-1", priority=priority))
    assert isinstance(facts[-1], outcome)
    if outcome is WorkUnitDeferred:
        assert facts[-1].reason_code == "throttled"


def test_a_unit_held_by_throttled_admission_asks_for_its_approval_once_admission_opens(
) -> None:
    """Found by the simulation (seed 7951): the approval it needed was taken for "no node"
    and dropped, so it stayed `throttled` for ever and never asked anyone."""
    h = ready()
    h.see(mode("THROTTLED"))
    held = h.feed(submit("wu-1", requires_approval=True, effect="WORLD_MUTATING",
                         kind="tool"))[-1]
    assert isinstance(held, WorkUnitDeferred) and held.reason_code == "throttled"
    h.see(mode("OPEN").model_copy(update={"event_id": "mode-open-again"}))
    (asks,) = h.tick(T0 + 1000)
    assert isinstance(asks, WorkUnitDeferred) and asks.reason_code == "awaiting_approval"
    assert h.unit("wu-1").status == "waiting"


@pytest.mark.parametrize(("priority", "outcome"), [
    ("p2", WorkUnitRejected), ("p1", WorkUnitScheduled), ("critical", WorkUnitScheduled),
])
def test_critical_rejects_below_p1(priority: str, outcome: type) -> None:
    h = ready()
    h.see(mode("CRITICAL"))
    facts = h.feed(submit("wu-1", priority=priority))
    assert isinstance(facts[-1], outcome)
    if outcome is WorkUnitRejected:
        assert facts[-1].reason_code == "critical_mode"
        assert h.unit("wu-1").status == "rejected"


def test_critical_can_be_configured_to_reject_p1() -> None:
    settings = OnceflowSettings(scheduler=SchedulerSettings(critical_admits=["critical", "p0"]))
    h = Harness(settings=settings)
    h.see(heartbeat("n1"), mode("CRITICAL"))
    assert isinstance(h.feed(submit("wu-1", priority="p1"))[-1], WorkUnitRejected)


def test_a_prepaid_tenants_unit_asks_the_limiter_to_hold_its_maximum_cost() -> None:
    billing = BillingSettings(prepaid_credits={"acme": Decimal("1.000000")})
    h = Harness(settings=OnceflowSettings(billing=billing))
    h.see(heartbeat("n1"))
    # CPU for its whole 4 s lease at 0.0005 USD/s: no accepted attempt bills more
    ask = h.feed(submit("wu-1", simulated_ms=1000, lease_ms=4000))[-1]
    assert isinstance(ask, SlotRequested)
    assert ask.hold_usd == Decimal("0.002000") and ask.scopes == []
    assert ask.cost == 0.0005  # fair queuing weighs its likely cost, not its maximum
    granted = SlotGranted(**caused_by(ask, "granted"), attempt_index=1,
                          held_usd=ask.hold_usd, budget_scopes=["tenant:acme"])
    assert isinstance(h.feed(granted)[-1], WorkUnitScheduled)


def test_a_unit_the_limiter_denies_for_its_budget_is_rejected_with_the_numbers() -> None:
    billing = BillingSettings(prepaid_credits={"acme": Decimal("1.000000")})
    h = Harness(settings=OnceflowSettings(billing=billing))
    h.see(heartbeat("n1"))
    ask = h.feed(submit("wu-1", simulated_ms=1000))[-1]
    denied = SlotDenied(**caused_by(ask, "denied"), attempt_index=1,
                        reason_code="BUDGET_EXCEEDED", reason="tenant:acme: 0.0004 left",
                        scope="tenant:acme", budget_usd=Decimal("1"),
                        charged_usd=Decimal("0.9996"), reserved_usd=Decimal("0"),
                        hold_usd=ask.hold_usd)
    rejected = h.feed(denied)[-1]
    assert isinstance(rejected, WorkUnitRejected)
    assert (rejected.reason_code, rejected.reason) == ("BUDGET_EXCEEDED",
                                                        "tenant:acme: 0.0004 left")
    assert h.unit("wu-1").status == "rejected"


def test_a_unit_rejected_for_its_budget_tells_the_units_that_wait_on_it() -> None:
    """Found by the simulation (seed 7): the child waited for ever on its rejected parent."""
    billing = BillingSettings(prepaid_credits={"acme": Decimal("1.000000")})
    h = Harness(settings=OnceflowSettings(partitions=1, billing=billing))
    h.see(heartbeat("n1"))
    ask = h.feed(submit("parent", simulated_ms=1000))[-1]
    assert isinstance(ask, SlotRequested)
    h.feed(submit("child", depends_on=["parent"]))
    registered = [o.event for o in h.outputs if isinstance(o, Routed)
                  and isinstance(o.event, WorkUnitDependencyRegistered)]
    for r in registered:
        h.feed(r)  # the child's registration reaches its parent (one partition here)
    denied = SlotDenied(**caused_by(ask, "denied"), attempt_index=1,
                        reason_code="BUDGET_EXCEEDED", reason="tenant:acme: 0.0004 left",
                        scope="tenant:acme", budget_usd=Decimal("1"),
                        charged_usd=Decimal("0.9996"), reserved_usd=Decimal("0"),
                        hold_usd=ask.hold_usd)
    fed = len(h.outputs)
    out = h.feed(denied)
    assert isinstance(out[0], WorkUnitRejected)
    notices = [o for o in out if isinstance(o, WorkUnitDependencyRegistered)]
    assert [(n.child_work_unit_id, n.parent_outcome) for n in notices] == [("child", "failed")]
    # what the notice routes reaches the child (one partition: the same reducer)
    while routed := [o.event for o in h.outputs[fed:] if isinstance(o, Routed)
                     and isinstance(o.event, WorkUnitDependencyResolved)]:
        fed = len(h.outputs)
        for r in routed:
            h.feed(r)
    assert h.unit("child").status == "failed"


def test_tenants_without_prepaid_credit_are_never_budget_limited() -> None:
    billing = BillingSettings(prepaid_credits={"other": Decimal("0")})
    h = Harness(settings=OnceflowSettings(billing=billing))
    h.see(heartbeat("n1"))
    assert isinstance(h.feed(submit("wu-1", simulated_ms=1000))[-1], WorkUnitScheduled)


def test_a_session_budget_without_session_budgets_on_is_rejected_saying_how_to_fix_it(
) -> None:
    h = ready()
    rejected = h.feed(submit("wu-1", session_budget_usd=Decimal("2")))[-1]
    assert isinstance(rejected, WorkUnitRejected)
    assert rejected.reason_code == "session_budgets_off"
    assert "ONCEFLOW_LIMITS__SESSION_BUDGETS=true" in rejected.reason


def test_throttled_units_are_placed_on_a_tick_once_the_mode_opens() -> None:
    h = ready()
    h.see(mode("THROTTLED"))
    h.feed(submit("wu-1"))
    assert h.tick(T0 + 200) == []
    h.see(mode("OPEN"))
    assert isinstance(h.tick(T0 + 400)[0], WorkUnitScheduled)


# -- claims and settlement ----------------------------------------------------------------


def test_first_valid_claim_is_granted_and_every_other_rejected() -> None:
    h = ready()
    sched = h.feed(submit("wu-1"))[-1]
    assert isinstance(sched, WorkUnitScheduled)
    assert isinstance(h.claim("wu-1", "n1", 1, at=T0 + 5, inc="a")[0], ClaimGranted)
    second = h.claim("wu-1", "n1", 1, at=T0 + 6, inc="b")[0]
    assert isinstance(second, ClaimRejected) and second.reason_code == "already_granted"
    other = h.claim("wu-1", "n9", 1, at=T0 + 7)[0]
    assert isinstance(other, ClaimRejected)
    stale = h.claim("wu-1", "n1", 7, at=T0 + 8)[0]
    assert isinstance(stale, ClaimRejected) and stale.reason_code == "stale_attempt"
    unknown = h.claim("nope", "n1", 1, at=T0 + 9)[0]
    assert isinstance(unknown, ClaimRejected) and unknown.reason_code == "unknown_unit"
    # grants and rejections are delivered to the node
    to_nodes = [o.event for o in h.outputs if isinstance(o, Routed)]
    assert sum(isinstance(e, ClaimRejected) for e in to_nodes) == 4


def test_claim_from_a_node_that_was_not_chosen_is_rejected() -> None:
    h = ready("n1")
    h.feed(submit("wu-1"))
    rejected = h.claim("wu-1", "n2", 1, at=T0 + 5)[0]
    assert isinstance(rejected, ClaimRejected) and rejected.reason_code == "not_selected_node"


def test_claim_answers_name_the_selected_node_the_claimant_and_the_dispatch() -> None:
    h = ready("n1")
    scheduled = h.feed(submit("wu-1"))[-1]
    assert isinstance(scheduled, WorkUnitScheduled)
    rejected = h.claim("wu-1", "n2", 1, at=T0 + 5)[0]
    assert isinstance(rejected, ClaimRejected)
    assert (rejected.node_id, rejected.selected_node_id) == ("n2", "n1")
    assert rejected.dispatch_event_id == scheduled.event_id
    granted = h.claim("wu-1", "n1", 1, at=T0 + 6)[0]
    assert isinstance(granted, ClaimGranted)
    assert (granted.node_id, granted.selected_node_id) == ("n1", "n1")
    assert granted.dispatch_event_id == scheduled.event_id
    unknown = h.claim("nope", "n1", 1, at=T0 + 7)[0]
    assert isinstance(unknown, ClaimRejected) and unknown.selected_node_id == ""


def test_a_release_1_report_is_settled_as_the_report_it_was() -> None:
    """Agents of release 1 reported results as `workunit.completed` with no settlement
    reason; during a rolling upgrade the scheduler settles those as reports."""
    h = ready()
    node, attempt, _ = run_to_grant(h, "wu-1")
    legacy = WorkUnitCompleted(event_id="v1-report", occurred_at=T0 + 20, work_unit_id="wu-1",
                               tenant_id="acme", execution_session_id="s1",
                               selected_node_id=node, attempt_index=attempt, incarnation="i1",
                               cpu_seconds=Decimal("0.5"))
    (settled,) = h.feed(legacy)
    assert isinstance(settled, WorkUnitCompleted) and settled.accepted
    assert settled.settlement_reason == "grant_holder"
    assert settled.causation_id == "v1-report" and settled.cpu_seconds == Decimal("0.5")
    assert h.unit("wu-1").status == "completed"
    assert h.feed(settled) == []  # a settlement is never an input


def test_grant_lease_covers_the_units_lease_and_simulated_time() -> None:
    h = ready()
    _, _, deadline = run_to_grant(h, "wu-1", lease_ms=1000, simulated_ms=50)
    assert deadline == T0 + 10 + 1050


def test_completion_from_the_grant_holder_is_accepted_and_others_rejected() -> None:
    h = ready()
    node, attempt, _ = run_to_grant(h, "wu-1")
    wrong_inc = h.complete("wu-1", node, attempt, at=T0 + 20, inc="other")[0]
    assert isinstance(wrong_inc, WorkUnitCompleted) and not wrong_inc.accepted
    assert wrong_inc.settlement_reason == "not_grant_holder"
    ok = h.complete("wu-1", node, attempt, at=T0 + 30)[0]
    assert isinstance(ok, WorkUnitCompleted) and ok.accepted
    assert ok.settlement_reason == "grant_holder" and ok.submitted_at == T0
    late = h.complete("wu-1", node, attempt, at=T0 + 40, inc="late")[0]
    assert isinstance(late, WorkUnitCompleted) and not late.accepted
    assert late.settlement_reason == "already_settled"
    assert h.unit("wu-1").status == "completed"


def test_a_committed_completion_is_never_rerun() -> None:
    h = ready()
    node, attempt, deadline = run_to_grant(h, "wu-1")
    h.complete("wu-1", node, attempt, at=T0 + 30)
    assert h.tick(deadline + 60_000) == []
    assert h.unit("wu-1").status == "completed"


# -- leases and recovery by effect label ---------------------------------------------------


def test_unclaimed_dispatch_is_placed_again_when_the_claim_deadline_passes() -> None:
    h = ready("n1", "n2")
    first = h.feed(submit("wu-1"))[-1]
    assert isinstance(first, WorkUnitScheduled)
    again = h.tick(first.lease_expires_at)
    assert len(again) == 1 and isinstance(again[0], WorkUnitScheduled)
    assert again[0].attempt_index == 2
    late = h.claim("wu-1", first.selected_node_id, 1, at=first.lease_expires_at + 1)[0]
    assert isinstance(late, ClaimRejected) and late.reason_code == "stale_attempt"


@pytest.mark.parametrize("effect", ["PURE", "READ_ONLY_NONDET"])
def test_expired_lease_retries_pure_and_read_only_work_with_backoff(effect: str) -> None:
    h = ready()
    node, attempt, deadline = run_to_grant(h, "wu-1", effect=effect)
    facts = h.tick(deadline)
    assert [type(f) for f in facts] == [WorkUnitAttemptFailed, WorkUnitRetryScheduled]
    failed, retry = facts
    assert isinstance(failed, WorkUnitAttemptFailed) and failed.error_code == "node_timeout"
    assert failed.lease_expired
    assert isinstance(retry, WorkUnitRetryScheduled) and retry.attempt_index == 2
    assert retry.delay_ms == retry_delay_ms("wu-1", 1, h.settings.scheduler)
    # the old attempt's result is fenced off
    late = h.complete("wu-1", node, attempt, at=deadline + 1)[0]
    assert isinstance(late, WorkUnitCompleted) and not late.accepted
    assert late.settlement_reason == "lease_expired"
    assert h.tick(retry.retry_at - 1) == []
    placed = h.tick(retry.retry_at)
    assert isinstance(placed[0], WorkUnitScheduled) and placed[0].attempt_index == 2


def test_world_mutating_staged_without_safe_class_goes_to_the_operator() -> None:
    h = ready()
    node, attempt, deadline = run_to_grant(h, "wu-1", kind="tool", effect="WORLD_MUTATING")
    h.stage("wu-1", node, attempt, at=T0 + 20)
    facts = h.tick(deadline)
    assert isinstance(facts[-1], WorkUnitNeedsOperator)
    assert facts[-1].reason_code == "unsafe_to_retry"
    assert h.unit("wu-1").status == "needs_operator"
    assert h.tick(deadline + 600_000) == []  # parked: never re-placed on its own


@pytest.mark.parametrize("idem", ["token", "readback"])
def test_world_mutating_with_a_safe_idempotency_class_is_retried(idem: str) -> None:
    h = ready()
    node, attempt, deadline = run_to_grant(h, "wu-1", kind="tool", effect="WORLD_MUTATING",
                                           idempotency_class=idem)
    h.stage("wu-1", node, attempt, at=T0 + 20)
    facts = h.tick(deadline)
    assert isinstance(facts[-1], WorkUnitRetryScheduled)


def test_world_mutating_that_never_staged_is_safe_to_place_again() -> None:
    h = ready()
    _, _, deadline = run_to_grant(h, "wu-1", kind="tool", effect="WORLD_MUTATING")
    assert isinstance(h.tick(deadline)[-1], WorkUnitRetryScheduled)


def test_non_retryable_error_fails_for_good() -> None:
    h = ready()
    node, attempt, _ = run_to_grant(h, "wu-1")
    facts = h.fail("wu-1", node, attempt, "handler_error", at=T0 + 20)
    assert [type(f) for f in facts] == [WorkUnitAttemptFailed, WorkUnitFailed]
    assert facts[1].error_reason.startswith("non_retryable_error")  # type: ignore[attr-defined]
    assert h.unit("wu-1").status == "failed"


def test_attempt_cap_ends_retries() -> None:
    h = ready()
    facts = h.feed(submit("wu-1", max_attempts=2))
    at = T0
    for n in (1, 2):
        sched = facts[-1]
        assert isinstance(sched, WorkUnitScheduled) and sched.attempt_index == n
        h.claim("wu-1", sched.selected_node_id, n, at=at + 1)
        facts = h.fail("wu-1", sched.selected_node_id, n, "network_transient", at=at + 2)
        if n == 1:
            retry = facts[-1]
            assert isinstance(retry, WorkUnitRetryScheduled)
            at = retry.retry_at
            facts = h.tick(at)
    assert isinstance(facts[-1], WorkUnitFailed) and facts[-1].final
    assert "attempt_cap_exceeded" in facts[-1].error_reason


def test_failure_from_a_fenced_attempt_changes_nothing() -> None:
    h = ready()
    node, attempt, _ = run_to_grant(h, "wu-1")
    assert h.fail("wu-1", node, attempt, "network_transient", at=T0 + 20, inc="zombie") == []
    assert h.unit("wu-1").status == "granted"


def test_backoff_is_exponential_capped_and_deterministic() -> None:
    cfg = SchedulerSettings()
    delays = [retry_delay_ms("wu-1", k, cfg) for k in range(1, 9)]
    assert delays == [retry_delay_ms("wu-1", k, cfg) for k in range(1, 9)]
    for k, d in enumerate(delays[:6], start=1):
        base = cfg.retry_base_ms * 2 ** (k - 1)
        assert base <= d <= base * (1 + cfg.retry_jitter_ratio)
    assert delays[-1] == cfg.retry_cap_ms
    jitters = {retry_delay_ms(f"wu-{i}", 1, cfg) for i in range(20)}
    assert len(jitters) > 1  # the jitter differs between units


def test_operator_resolutions() -> None:
    for resolution, status in (("retry", "retry_wait"), ("mark_done", "completed"),
                               ("abandon", "failed")):
        h = ready()
        node, attempt, deadline = run_to_grant(h, "wu-1", kind="tool", effect="WORLD_MUTATING")
        h.stage("wu-1", node, attempt, at=T0 + 20)
        h.tick(deadline)
        h.feed(ControlOperatorResolved(event_id=f"op-{resolution}", occurred_at=deadline + 5,
                                       work_unit_id="wu-1", resolution=resolution,  # type: ignore[arg-type]
                                       result_ref=REF if resolution == "mark_done" else None))
        assert h.unit("wu-1").status == status


def test_a_second_resolution_is_refused_and_recorded_saying_why() -> None:
    h = ready()
    node, attempt, deadline = run_to_grant(h, "wu-1", kind="tool", effect="WORLD_MUTATING")
    h.stage("wu-1", node, attempt, at=T0 + 20)
    h.tick(deadline)
    first = h.feed(ControlOperatorResolved(event_id="op-1", occurred_at=deadline + 5,
                                           work_unit_id="wu-1", resolution="abandon",
                                           operator="carol", note="customer gone"))
    record = first[0]
    assert isinstance(record, ControlApplied)
    assert (record.action, record.outcome, record.requested_by, record.reason) == (
        "resolve", "applied", "carol", "customer gone")
    (second,) = h.feed(ControlOperatorResolved(event_id="op-2", occurred_at=deadline + 6,
                                               work_unit_id="wu-1", resolution="retry",
                                               operator="dave"))
    assert isinstance(second, ControlApplied) and second.outcome == "refused"
    assert second.detail == "work unit wu-1 is not waiting for an operator (it is failed)"
    assert h.unit("wu-1").status == "failed"


# -- dependencies ---------------------------------------------------------------------------


def test_child_waits_for_its_parent_and_gets_the_parents_result() -> None:
    h = ready()
    child_facts = h.feed(submit("child", depends_on=["parent"]))
    assert isinstance(child_facts[-1], WorkUnitDeferred)
    assert child_facts[-1].reason_code == "waiting_on_parents"
    registration = [o.event for o in h.outputs
                    if isinstance(o, Routed) and isinstance(o.event, WorkUnitDependencyRegistered)]
    assert len(registration) == 1
    # the parent's partition (here the same state) records the child
    h.feed(registration[0])
    node, attempt, _ = run_to_grant(h, "parent")
    done = h.feed(WorkUnitResultReported(event_id="done-parent", occurred_at=T0 + 50,
                                         work_unit_id="parent", node_id=node,
                                         attempt_index=attempt, incarnation="i1",
                                         result_ref=REF))
    notice = [f for f in done if isinstance(f, WorkUnitDependencyRegistered)]
    assert len(notice) == 1 and notice[0].parent_outcome == "completed"
    resolved = [o.event for o in h.outputs
                if isinstance(o, Routed) and isinstance(o.event, WorkUnitDependencyResolved)]
    assert len(resolved) == 1
    facts = h.feed(resolved[0])
    sched = facts[-1]
    assert isinstance(sched, WorkUnitScheduled) and sched.parent_result_refs == [REF]


def test_registering_with_a_finished_parent_answers_at_once() -> None:
    h = ready()
    node, attempt, _ = run_to_grant(h, "parent")
    h.complete("parent", node, attempt, at=T0 + 30)
    facts = h.feed(WorkUnitDependencyRegistered(
        event_id="reg", occurred_at=T0 + 40, work_unit_id="parent", child_work_unit_id="c"))
    assert facts[0].parent_outcome == "completed"  # type: ignore[attr-defined]


def test_a_failed_parent_fails_the_child() -> None:
    h = ready()
    h.feed(submit("child", depends_on=["parent"]))
    h.feed(WorkUnitDependencyResolved(event_id="r", occurred_at=T0 + 5, work_unit_id="child",
                                      parent_work_unit_id="parent", outcome="failed"))
    assert h.unit("child").status == "failed"


# -- replay --------------------------------------------------------------------------------


def test_folding_the_facts_rebuilds_the_same_state() -> None:
    h = Harness()
    h.see(*(heartbeat(n, available=100) for n in ("n1", "n2", "n3")))
    for i in range(30):
        wu = f"wu-{i}"
        facts = h.feed(submit(wu, effect="WORLD_MUTATING" if i % 3 == 0 else "PURE",
                              kind="tool" if i % 3 == 0 else "cpu"))
        sched = facts[-1]
        assert isinstance(sched, WorkUnitScheduled)
        h.claim(wu, sched.selected_node_id, 1, at=T0 + 10)
        if i % 3 == 0:
            h.stage(wu, sched.selected_node_id, 1, at=T0 + 11)
        if i % 2 == 0:
            h.complete(wu, sched.selected_node_id, 1, at=T0 + 20)
    h.tick(T0 + 120_000)
    facts = [o for o in h.outputs if not isinstance(o, Routed)]
    replayed = MemoryState()
    fresh = Scheduler(OnceflowSettings())
    for fact in facts:
        fresh.evolve(replayed, fact)
    live = MemoryState()
    for key, value in h.state.items():
        live.set(key, value)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(live.raw_items())
    statuses = {UnitRecord.from_state(v).status for k, v in h.state.items("u:")}
    assert statuses == {"completed", "needs_operator", "retry_wait"}


def test_dispatches_on_their_way_count_against_a_node_until_claimed() -> None:
    h = Harness()
    h.see(heartbeat("n1", available=2))
    kinds = [type(h.feed(submit(f"wu-{i}"))[-1]) for i in range(3)]
    assert kinds == [WorkUnitScheduled, WorkUnitScheduled, WorkUnitDeferred]
    # A heartbeat written before the two dispatches arrived frees nothing.
    h.see(heartbeat("n1", at=T0 + 1000, available=2))
    assert [o for o in h.tick(T0 + 1100) if isinstance(o, WorkUnitScheduled)] == []
    # Both arrived and were claimed: the node's heartbeats count them from now on.
    assert isinstance(h.claim("wu-0", "n1", 1, at=T0 + 1150)[0], ClaimGranted)
    assert isinstance(h.claim("wu-1", "n1", 1, at=T0 + 1160)[0], ClaimGranted)
    h.see(heartbeat("n1", at=T0 + 1200, available=0))  # both running
    assert [o for o in h.tick(T0 + 1250) if isinstance(o, WorkUnitScheduled)] == []
    h.see(heartbeat("n1", at=T0 + 1300, available=1))  # one of them done
    placed = [o for o in h.tick(T0 + 1350) if isinstance(o, WorkUnitScheduled)]
    assert [p.work_unit_id for p in placed] == ["wu-2"]


def test_a_claimed_unit_counts_against_its_node_until_a_heartbeat_written_after_the_claim(
) -> None:
    """A claim does not free the slot its dispatch took: the node's last heartbeat did not
    count the unit yet, so placing again at once would give the node more than it asked
    for, as fast as claims come back, until its next heartbeat."""
    h = Harness()
    h.see(heartbeat("n1", available=2))
    assert [type(h.feed(submit(f"wu-{i}"))[-1]) for i in range(2)] == [
        WorkUnitScheduled, WorkUnitScheduled]
    assert isinstance(h.claim("wu-0", "n1", 1, at=T0 + 100)[0], ClaimGranted)
    assert isinstance(h.feed(submit("wu-2"))[-1], WorkUnitDeferred)  # not freed by the claim
    h.see(heartbeat("n1", at=T0 + 90, available=2))  # written before the claim: no count
    assert [o for o in h.tick(T0 + 150) if isinstance(o, WorkUnitScheduled)] == []
    h.see(heartbeat("n1", at=T0 + 200, available=1))  # counts wu-0; wu-1 still on its way
    assert [o for o in h.tick(T0 + 250) if isinstance(o, WorkUnitScheduled)] == []
    h.see(heartbeat("n1", at=T0 + 300, available=2))  # wu-0 done, wu-1 still on its way
    placed = [o for o in h.tick(T0 + 350) if isinstance(o, WorkUnitScheduled)]
    assert [p.work_unit_id for p in placed] == ["wu-2"]


def test_a_dispatch_nobody_claimed_returns_its_slot() -> None:
    cfg = OnceflowSettings().scheduler
    h = Harness()
    h.see(heartbeat("n1", available=1))
    assert isinstance(h.feed(submit("wu-0"))[-1], WorkUnitScheduled)
    assert isinstance(h.feed(submit("wu-1"))[-1], WorkUnitDeferred)
    h.see(heartbeat("n1", at=T0 + cfg.claim_timeout_ms, available=1))
    again = [o for o in h.tick(T0 + cfg.claim_timeout_ms + 1)
             if isinstance(o, WorkUnitScheduled)]
    assert [a.work_unit_id for a in again] == ["wu-0"]  # placed again, on its returned slot


def test_a_lease_set_below_the_scanned_floor_still_falls_due() -> None:
    # A tick scans leases from where the last one stopped; a unit decided
    # from an old event gets a deadline below that point and must not be missed.
    h = ready("n1", "n2")
    assert h.tick(T0 + 100) == []
    old = h.feed(submit("late", at=T0 - 60_000))[-1]
    assert isinstance(old, WorkUnitScheduled) and old.lease_expires_at < T0 + 100
    again = h.tick(T0 + 200)
    assert len(again) == 1 and isinstance(again[0], WorkUnitScheduled)
    assert again[0].attempt_index == 2


# -- queue samples for the autoscaler ------------------------------------------------------


def test_ticks_sample_the_queue_once_per_interval() -> None:
    h = ready()  # one node with 8 free slots
    h.see(heartbeat("n1", available=2))
    for i in range(5):
        h.feed(submit(f"wu-{i}"))  # placement only counts what the view allows: 2 placed
    granted_at = T0 + 300
    h.claim("wu-0", "n1", 1, at=granted_at)
    h.tick(T0 + 1000)
    h.tick(T0 + 1500)  # within the interval: no second sample
    (sample,) = h.samples
    assert (sample.queue, sample.deferred, sample.running) == (4, 3, 1)
    assert sample.wait_p95_ms == 300.0 and sample.waits_sampled == 1
    assert (sample.node_count, sample.admission_mode) == (1, "OPEN")
    h.tick(T0 + 2000)
    assert len(h.samples) == 2 and h.samples[1].waits_sampled == 0  # waits start again


def test_throttled_units_are_counted_apart_from_the_queue() -> None:
    h = ready()
    h.see(mode("THROTTLED"))
    h.feed(submit("wu-low", priority="p2"))
    h.feed(submit("wu-high", priority="p1"))
    h.tick(T0 + 1000)
    (sample,) = h.samples
    assert (sample.queue, sample.throttled, sample.admission_mode) == (1, 1, "THROTTLED")
    h.see(mode("OPEN"))
    h.tick(T0 + 2000)  # places the held unit (its sample is the queue the tick found)
    h.tick(T0 + 3000)
    assert (h.samples[-1].queue, h.samples[-1].throttled) == (2, 0)


def _breaker(node: str, state: str, until: int, at: int) -> TrustScoreUpdated:
    return TrustScoreUpdated(event_id=f"trust-{node}-{state}-{at}", occurred_at=at, node_id=node,
                             trust_score=0.1, breaker=state,  # type: ignore[arg-type]
                             breaker_until=until)


def test_an_open_node_gets_nothing_then_one_probe_per_interval() -> None:
    h = ready("n1")
    until = T0 + 30_000
    h.see(_breaker("n1", "open", until, T0))
    deferred = h.feed(submit("wu-1"))[-1]
    assert isinstance(deferred, WorkUnitDeferred)
    assert deferred.filter_counts == {"breaker_open": 1}
    h.see(heartbeat("n1", at=until))
    probe = h.feed(submit("wu-2", at=until))[-1]  # past its time: half-open, a probe is due
    assert isinstance(probe, WorkUnitScheduled) and probe.selected_node_id == "n1"
    held = h.feed(submit("wu-3", at=until + 10))[-1]
    assert isinstance(held, WorkUnitDeferred) and held.filter_counts == {"breaker_probing": 1}
    interval = h.settings.scheduler.breaker_probe_interval_ms
    next_probe = h.feed(submit("wu-4", at=until + interval))[-1]
    assert isinstance(next_probe, WorkUnitScheduled)
    h.see(_breaker("n1", "closed", 0, until + interval + 1))
    assert all(isinstance(h.feed(submit(f"wu-{i}", at=until + interval + 2))[-1],
                          WorkUnitScheduled) for i in range(5, 9))
