"""Operator controls in the scheduler: pause, resume and cancel at unit, session, tenant and
queue scope, each recorded with its actor, reason and outcome."""

from __future__ import annotations

from typing import Any

from onceflow.schemas import (
    ClaimGranted,
    ClaimRejected,
    ContentRef,
    ControlApplied,
    ControlHumanInputSubmitted,
    ControlRequested,
    Event,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
    WorkUnitScheduled,
)
from onceflow.streams.types import Routed
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)


def _ready() -> Harness:
    h = Harness()
    h.see(heartbeat("n1"))
    return h


def control(action: str, scope: str, *, at: int = T0, **target: Any) -> ControlRequested:
    return ControlRequested(event_id=f"ctl-{action}-{scope}-{at}", occurred_at=at,
                            action=action, scope=scope, requested_by="alice",  # type: ignore[arg-type]
                            reason="maintenance", **target)


def apply(h: Harness, command: ControlRequested) -> list[Event]:
    """Feed a command as it travels: a wider one is recorded, then its copy for this
    partition comes back (the harness keeps every partition's units in one state)."""
    facts = h.feed(command)
    if command.scope == "unit":
        return facts
    (received,) = facts
    assert isinstance(received, ControlRequested) and received.broadcast
    copies = [o for o in h.outputs if isinstance(o, Routed)
              and isinstance(o.event, ControlRequested) and o.event.causation_id
              == command.event_id]
    assert len(copies) == h.scheduler.ctx.reports.partitions  # one for every partition
    assert all(not c.event.broadcast for c in copies)  # type: ignore[attr-defined]
    return h.feed(copies[0].event)


def applied(facts: list[Event]) -> ControlApplied:
    (record,) = [f for f in facts if isinstance(f, ControlApplied)]
    return record


def test_a_paused_session_places_nothing_and_a_resume_places_it_on_the_next_tick() -> None:
    h = _ready()
    record = applied(apply(h, control("pause", "session", tenant_id="acme",
                                      execution_session_id="s1")))
    assert (record.outcome, record.target, record.requested_by, record.reason) == (
        "applied", "session:acme/s1", "alice", "maintenance")
    held = h.feed(submit("wu-1", at=T0 + 1))[-1]
    assert isinstance(held, WorkUnitDeferred) and held.reason_code == "paused"
    assert "session:acme/s1 is paused" in held.reason
    other = h.feed(submit("wu-2", at=T0 + 2).model_copy(
        update={"execution_session_id": "s2"}))[-1]
    assert isinstance(other, WorkUnitScheduled)  # another session is not held
    assert h.tick(T0 + 100) == []  # still paused: nothing new
    resumed = applied(apply(h, control("resume", "session", at=T0 + 200, tenant_id="acme",
                                       execution_session_id="s1")))
    assert (resumed.outcome, resumed.resumed) == ("applied", 1)
    (placed,) = h.tick(T0 + 300)
    assert isinstance(placed, WorkUnitScheduled) and placed.work_unit_id == "wu-1"
    assert_replay_equals_live(h)


def test_a_resumed_unit_with_nowhere_to_go_waits_as_deferred_and_is_placed_later() -> None:
    """Found by the simulation: resumed while no node could take it, the unit kept its
    `paused` reason and was looked at again only at the next pause or resume: never."""
    h = _ready()
    apply(h, control("pause", "session", tenant_id="acme", execution_session_id="s1"))
    held = h.feed(submit("wu-1", at=T0 + 1))[-1]
    assert isinstance(held, WorkUnitDeferred) and held.reason_code == "paused"
    h.see(heartbeat("n1", at=T0 + 2, health="down"))  # the only node goes away
    apply(h, control("resume", "session", at=T0 + 3, tenant_id="acme",
                     execution_session_id="s1"))
    (waits,) = h.tick(T0 + 100)
    assert isinstance(waits, WorkUnitDeferred) and waits.reason_code != "paused"
    assert h.unit("wu-1").reason == waits.reason_code
    h.see(heartbeat("n1", at=T0 + 200))  # it is back
    (placed,) = h.tick(T0 + 300)
    assert isinstance(placed, WorkUnitScheduled) and placed.work_unit_id == "wu-1"
    assert_replay_equals_live(h)


def test_a_claim_made_after_a_pause_is_refused_and_the_unit_waits_for_the_resume() -> None:
    h = _ready()
    sched = h.feed(submit("wu-1"))[-1]
    assert isinstance(sched, WorkUnitScheduled)
    apply(h, control("pause", "tenant", at=T0 + 1, tenant_id="acme"))
    rejected, waits = h.claim("wu-1", "n1", 1, at=T0 + 2)
    assert isinstance(rejected, ClaimRejected) and rejected.reason_code == "paused"
    assert isinstance(waits, WorkUnitDeferred) and h.unit("wu-1").reason == "paused"
    apply(h, control("resume", "tenant", at=T0 + 3, tenant_id="acme"))
    (again,) = h.tick(T0 + 100)
    assert isinstance(again, WorkUnitScheduled) and again.attempt_index == 2
    assert isinstance(h.claim("wu-1", "n1", 2, at=T0 + 101)[0], ClaimGranted)


def test_the_whole_queue_pauses_and_pauses_nest() -> None:
    h = _ready()
    apply(h, control("pause", "queue"))
    apply(h, control("pause", "unit", at=T0 + 1, work_unit_id="wu-1"))  # unknown yet
    assert h.feed(submit("wu-2", at=T0 + 2))[-1].reason_code == "paused"  # type: ignore[attr-defined]
    apply(h, control("resume", "queue", at=T0 + 3))
    (placed,) = h.tick(T0 + 100)
    assert placed.work_unit_id == "wu-2"


def test_a_running_session_is_cancelled_queued_and_running_units_and_the_node_told() -> None:
    h = _ready()
    h.feed(submit("wu-1"))
    h.claim("wu-1", "n1", 1, at=T0 + 1)  # running
    h.feed(submit("wu-2", at=T0 + 2, depends_on=["wu-1"]))  # waiting on its parent
    before = len(h.outputs)
    facts = apply(h, control("cancel", "session", at=T0 + 5, tenant_id="acme",
                             execution_session_id="s1"))
    record = applied(facts)
    assert (record.cancelled, record.stopping, record.outcome) == (1, 1, "applied")
    cancels = {f.work_unit_id: f for f in facts if isinstance(f, WorkUnitCancelled)}
    assert set(cancels) == {"wu-1", "wu-2"}
    assert cancels["wu-1"].node_id == "n1" and cancels["wu-2"].node_id == ""
    assert cancels["wu-1"].requested_by == "alice"
    told = [o for o in h.outputs[before:] if isinstance(o, Routed)
            and isinstance(o.event, WorkUnitCancelled)]
    assert [o.event.work_unit_id for o in told] == ["wu-1"]
    assert told[0].topic.endswith("dispatch")
    # the result that arrives after the cancel is not accepted
    (late,) = h.complete("wu-1", "n1", 1, at=T0 + 6)
    assert isinstance(late, WorkUnitCompleted) and not late.accepted
    assert late.settlement_reason == "already_settled"
    assert h.unit("wu-1").status == "cancelled"
    assert_replay_equals_live(h)


def test_a_completion_that_comes_first_wins_and_the_cancel_is_refused_saying_so() -> None:
    h = _ready()
    h.feed(submit("wu-1"))
    h.claim("wu-1", "n1", 1, at=T0 + 1)
    (done, *_) = h.complete("wu-1", "n1", 1, at=T0 + 2)
    assert isinstance(done, WorkUnitCompleted) and done.accepted
    record = applied(apply(h, control("cancel", "unit", at=T0 + 3, work_unit_id="wu-1")))
    assert (record.outcome, record.detail) == ("refused", "work unit wu-1 is already done")
    assert h.unit("wu-1").status == "completed"


def test_controls_on_what_is_not_there_are_refused_or_find_nothing_here() -> None:
    h = _ready()
    record = applied(apply(h, control("cancel", "unit", work_unit_id="nope")))
    assert (record.outcome, record.detail) == ("not_found", "unknown work unit nope")
    record = applied(apply(h, control("cancel", "session", at=T0 + 1, tenant_id="acme",
                                      execution_session_id="ghost")))
    assert record.outcome == "none_here"
    record = applied(apply(h, control("resume", "tenant", at=T0 + 2, tenant_id="acme")))
    assert (record.outcome, record.detail) == ("refused", "tenant:acme is not paused")


# -- approvals ------------------------------------------------------------------------------


def _deliver_dependency_notices(h: Harness, since: int = 0) -> None:
    """Feed back the dependency notices the scheduler sent between partitions."""
    for o in list(h.outputs[since:]):
        if isinstance(o, Routed) and isinstance(o.event, WorkUnitDependencyRegistered
                                                 | WorkUnitDependencyResolved):
            h.feed(o.event)


def test_a_unit_that_requires_approval_waits_and_runs_once_approved() -> None:
    h = _ready()
    (_, waits) = h.feed(submit("wu-1", requires_approval=True, approval_timeout_ms=60_000))
    assert isinstance(waits, WorkUnitDeferred) and waits.reason_code == "awaiting_approval"
    assert waits.retry_at == T0 + 60_000 and "onceflow approve wu-1" in waits.reason
    assert h.unit("wu-1").status == "waiting"
    assert h.tick(T0 + 59_999) == []  # before its deadline nothing happens
    facts = apply(h, control("approve", "unit", at=T0 + 1_000, work_unit_id="wu-1"))
    assert applied(facts).outcome == "applied"
    assert isinstance(facts[-1], WorkUnitScheduled)
    assert h.unit("wu-1").approved
    # approving again is refused, saying why
    again = applied(apply(h, control("approve", "unit", at=T0 + 1_001, work_unit_id="wu-1")))
    assert (again.outcome, again.detail) == (
        "refused", "work unit wu-1 is not waiting for an approval (it is scheduled)")
    assert_replay_equals_live(h)


def test_an_approval_left_to_its_deadline_fails_closed_and_its_dependents_with_it() -> None:
    h = _ready()
    h.feed(submit("wu-1", requires_approval=True, approval_timeout_ms=60_000))
    h.feed(submit("wu-2", at=T0 + 1, depends_on=["wu-1"]))
    _deliver_dependency_notices(h)
    before = len(h.outputs)
    expired = h.tick(T0 + 60_000)
    _deliver_dependency_notices(h, since=before)
    failed = [f for f in expired if isinstance(f, WorkUnitFailed)]
    assert [(f.work_unit_id, f.error_code, f.final) for f in failed][:1] == [
        ("wu-1", "approval_expired", True)]
    assert h.unit("wu-1").status == "failed"
    assert h.unit("wu-2").status == "failed"  # its parent will never complete
    # nothing ran: it was never scheduled
    assert not any(isinstance(o, WorkUnitScheduled) and o.work_unit_id == "wu-1"
                   for o in h.outputs)


def test_a_denied_unit_fails_closed_with_who_denied_it_and_why() -> None:
    h = _ready()
    h.feed(submit("wu-1", requires_approval=True))
    facts = apply(h, control("deny", "unit", at=T0 + 5, work_unit_id="wu-1"))
    (failed,) = [f for f in facts if isinstance(f, WorkUnitFailed)]
    assert failed.error_code == "approval_denied" and failed.final
    assert failed.error_reason == "denied by alice: maintenance"
    assert applied(facts).detail == "work unit wu-1 denied: nothing applied"


def test_a_unit_that_depends_on_itself_is_rejected_instead_of_waiting_forever() -> None:
    h = _ready()
    rejected = h.feed(submit("wu-1", depends_on=["wu-1"]))[-1]
    assert rejected.reason_code == "depends_on_cycle"  # type: ignore[attr-defined]
    assert "depends on itself" in rejected.reason  # type: ignore[attr-defined]
    assert h.unit("wu-1").status == "rejected"


# -- human input ----------------------------------------------------------------------------

ANSWER = ContentRef(sha256="a" * 64, size=9,
                    media_type="application/json")


def answer(wu: str, at: int) -> ControlHumanInputSubmitted:
    return ControlHumanInputSubmitted(event_id=f"ans-{wu}-{at}", occurred_at=at,
                                      tenant_id="acme", execution_session_id="s1",
                                      work_unit_id=wu, prompt_id=wu, input_ref=ANSWER,
                                      submitted_by="bob")


def test_an_input_step_waits_for_its_answer_and_hands_it_to_the_next_step() -> None:
    h = _ready()
    (_, waits) = h.feed(submit("ask", kind="input", prompt="Which region?",
                               approval_timeout_ms=60_000))
    assert isinstance(waits, WorkUnitDeferred) and waits.reason_code == "awaiting_input"
    h.feed(submit("use", at=T0 + 1, depends_on=["ask"]))
    _deliver_dependency_notices(h)
    before = len(h.outputs)
    facts = h.feed(answer("ask", T0 + 5))
    assert applied(facts).outcome == "applied"
    done = next(f for f in facts if isinstance(f, WorkUnitCompleted))
    assert (done.accepted, done.settlement_reason, done.result_ref) == (
        True, "human_input", ANSWER)
    _deliver_dependency_notices(h, since=before)
    placed = [o for o in h.outputs[before:] if isinstance(o, WorkUnitScheduled)]
    assert placed and placed[0].parent_result_refs == [ANSWER]  # like a parent's result
    again = applied(h.feed(answer("ask", T0 + 6)))
    assert (again.outcome, again.detail) == (
        "refused", "input step ask is not waiting for an answer (it is completed)")
    assert_replay_equals_live(h)


def test_an_unanswered_input_step_takes_its_default_or_fails() -> None:
    h = _ready()
    h.feed(submit("with-default", kind="input", approval_timeout_ms=1_000, input_ref=ANSWER))
    h.feed(submit("without", kind="input", approval_timeout_ms=1_000))
    facts = h.tick(T0 + 1_000)
    settled = {f.work_unit_id: f.settlement_reason for f in facts
               if isinstance(f, WorkUnitCompleted)}
    failed = {f.work_unit_id: f.error_code for f in facts if isinstance(f, WorkUnitFailed)}
    assert settled == {"with-default": "input_default"}
    assert failed == {"without": "input_expired"}


def test_answering_what_is_not_an_input_step_is_refused() -> None:
    h = _ready()
    h.feed(submit("cpu-1"))
    record = applied(h.feed(answer("cpu-1", T0 + 1)))
    assert (record.outcome, record.detail) == (
        "refused", "work unit cpu-1 is not an input step (it is a cpu unit)")


def _limited() -> Harness:
    from onceflow.settings import OnceflowSettings
    from onceflow.streams.limits import LimitsSettings

    h = Harness(settings=OnceflowSettings(limits=LimitsSettings(session_budgets=True)))
    h.see(heartbeat("n1"))
    return h


def _at_limit(ask: Event, policy: str) -> Event:
    from onceflow.schemas import SlotDenied
    from onceflow.streams.ids import caused_by

    return SlotDenied(**caused_by(ask, "denied"), attempt_index=1, reason_code="SESSION_LIMIT",
                      reason="session acme/s1 reached its max_steps: 3 of 3",
                      scope="session:acme/s1", on_limit=policy)  # type: ignore[arg-type]


def test_a_step_of_a_session_with_limits_asks_the_limiter_with_them() -> None:
    from onceflow.schemas import SessionLimits, SlotRequested

    h = _limited()
    limits = SessionLimits(max_steps=3, max_tokens=5000)
    ask = h.feed(submit("wu-1", kind="llm_pod", prompt="x" * 400, model="m",
                        parameters={"max_tokens": "200"}, session_limits=limits))[-1]
    assert isinstance(ask, SlotRequested)
    assert ask.session_limits == limits and ask.kind == "llm_pod"
    assert ask.session_tokens == 100 + 200  # input estimate and max_tokens out


def test_a_step_refused_at_its_sessions_limit_waits_paused_or_is_cancelled() -> None:
    from onceflow.schemas import SessionLimits

    h = _limited()
    ask = h.feed(submit("wu-1", session_limits=SessionLimits(max_steps=3)))[-1]
    parked = h.feed(_at_limit(ask, "park"))[0]
    assert isinstance(parked, WorkUnitDeferred) and parked.reason_code == "paused"
    assert "max_steps: 3 of 3" in parked.reason
    assert h.unit("wu-1").status == "deferred" and not h.unit("wu-1").slots
    ask = h.feed(submit("wu-2", at=T0 + 1, session_limits=SessionLimits(
        max_steps=3, on_limit="cancel")))[-1]
    cancelled = h.feed(_at_limit(ask, "cancel"))
    assert any(isinstance(f, WorkUnitCancelled) for f in cancelled)
    assert h.unit("wu-2").status == "cancelled"
    assert_replay_equals_live(h)


def test_only_a_raised_limit_resumes_a_session_parked_at_one() -> None:
    from onceflow.streams.limits import LIMITS_ACTOR

    h = _ready()
    parked = control("pause", "session", tenant_id="acme", execution_session_id="s1")
    parked = parked.model_copy(update={"requested_by": LIMITS_ACTOR,
                                       "reason": "reached its max_steps: 3 of 3"})
    assert applied(apply(h, parked)).outcome == "applied"
    refused = applied(apply(h, control("resume", "session", at=T0 + 1, tenant_id="acme",
                                       execution_session_id="s1")))
    assert refused.outcome == "refused"
    assert "parked at one of its limits (reached its max_steps: 3 of 3)" in refused.detail
    assert "onceflow session limits" in refused.detail
    raised = control("resume", "session", at=T0 + 2, tenant_id="acme",
                     execution_session_id="s1").model_copy(update={"requested_by": LIMITS_ACTOR})
    assert applied(apply(h, raised)).outcome == "none_here"  # resumed; no units were held


def test_an_answer_that_does_not_fit_the_steps_schema_is_refused_on_the_log() -> None:
    h = _ready()
    h.feed(submit("ask", kind="input", prompt="Which region?", approval_timeout_ms=60_000))
    bad = answer("ask", T0 + 1).model_copy(update={"schema_error": "region: required"})
    record = applied(h.feed(bad))
    assert record.outcome == "refused" and "does not fit its schema: region: required" \
        in record.detail
    assert h.unit("ask").status == "waiting"  # it still waits for a good answer
