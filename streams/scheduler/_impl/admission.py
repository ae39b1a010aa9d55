"""Admission and placement: a submission becomes a unit, then a placed (or deferred) attempt.

Admission refuses a resent id with another payload and what the admission
mode does not admit; budgets are the limiter's (a unit held against one asks
it before placement, `slots`); placement picks a node or says why none.
"""

from __future__ import annotations

from collections.abc import Sequence

from onceflow.schemas import (
    DeferralReason,
    Event,
    SlotGranted,
    SlotRequested,
    WorkUnitDeferred,
    WorkUnitRejected,
    WorkUnitScheduled,
    WorkUnitSubmitted,
    submission_refusal,
)
from onceflow.streams.ids import idempotency_key_for, payload_digest, restated
from onceflow.streams.scheduler._impl.backoff import paused_until, scope_of
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.pauses import paused_by
from onceflow.streams.scheduler._impl.placement import PlacementRequest, Streak, place
from onceflow.streams.scheduler._impl.retention import beyond_horizon
from onceflow.streams.scheduler._impl.slots import release_slots, request_slots
from onceflow.streams.scheduler._impl.unit import (
    WAITING_FOR_A_PERSON,
    PlacementMemory,
    UnitRecord,
    forget_orphan,
)
from onceflow.streams.types import Routed, State

__all__ = [
    "RECORDED_CANDIDATES",
    "deferred",
    "evolve_deferred",
    "evolve_rejected",
    "evolve_scheduled",
    "evolve_submitted",
    "on_slot_granted",
    "on_submitted",
    "placed",
    "route_scheduled",
]

#: how many placement candidates a decision record keeps (the best ones)
RECORDED_CANDIDATES = 8


def on_submitted(ctx: SchedulerContext, state: State, event: WorkUnitSubmitted
                 ) -> Sequence[Event]:
    wu = event.work_unit_id
    if not wu:
        raise ValueError("workunit.submitted without work_unit_id")
    existing = ctx.load(state, wu)
    digest = payload_digest(event)
    if existing is not None:
        if existing.digest == digest:
            return ()  # the same unit again: it runs once
        return (WorkUnitRejected(
            **ctx.envelope(existing, event, "duplicate", event.occurred_at),
            reason_code="duplicate_id_different_payload",
            reason=f"work unit {wu} was already submitted with a different payload; "
                   "submit the new payload under a new work_unit_id",
            decided_at=event.occurred_at,
        ),)
    stale = beyond_horizon(ctx, state, event)
    if stale is not None:
        return (stale,)
    admitted = restated(event, "admitted")
    unit = UnitRecord.submitted(event, digest)
    ctx.admitted = (admitted.event_id, unit)
    facts: list[Event] = [admitted]
    now = event.occurred_at
    refused = submission_refusal(event)
    if refused is not None:
        code, reason = refused
        facts.append(WorkUnitRejected(
            **ctx.envelope(unit, event, "rejected", now), reason_code=code, reason=reason,
            decided_at=now,
        ))
        return facts
    if (event.session_budget_usd is not None or event.session_limits is not None) \
            and not ctx.budgets:
        what = "session_budget_usd" if event.session_budget_usd is not None \
            else "session_limits"
        facts.append(WorkUnitRejected(
            **ctx.envelope(unit, event, "rejected", now), reason_code="session_budgets_off",
            reason=f"the submission sets {what} but this deployment holds no session budgets "
                   "or limits: set ONCEFLOW_LIMITS__SESSION_BUDGETS=true, or submit without "
                   "them", decided_at=now,
        ))
        return facts
    mode = ctx.view.mode
    if mode == "CRITICAL" and event.priority not in ctx.cfg.critical_admits:
        facts.append(WorkUnitRejected(
            **ctx.envelope(unit, event, "rejected", now), reason_code="critical_mode",
            reason=f"admission mode is CRITICAL and priority {event.priority} is not admitted",
            decided_at=now,
        ))
        return facts
    if mode == "THROTTLED" and event.priority not in ctx.cfg.throttled_admits:
        facts.append(deferred(ctx, unit, event, now, "throttled",
                              f"admission mode is THROTTLED; {event.priority} waits"))
        return facts
    if event.depends_on:
        facts.append(deferred(
            ctx, unit, event, now, "waiting_on_parents",
            f"waiting for {len(event.depends_on)} parent unit(s) to complete",
        ))
        return facts
    facts.append(placed(ctx, state, unit, event, now, "placed"))
    return facts


def deferred(ctx: SchedulerContext, unit: UnitRecord, cause: Event, now: int,
             code: DeferralReason, reason: str, role: str = "deferred",
             filter_counts: dict[str, int] | None = None,
             retry_at: int | None = None) -> WorkUnitDeferred:
    return WorkUnitDeferred(
        **ctx.envelope(unit, cause, role, now), reason_code=code, reason=reason,
        decided_at=now, filter_counts=filter_counts or {}, retry_at=retry_at,
    )


def placed(ctx: SchedulerContext, state: State, unit: UnitRecord, cause: Event, now: int,
           role: str) -> WorkUnitScheduled | WorkUnitDeferred | SlotRequested:
    """Place a unit now: a `scheduled` fact, a `deferred` one that says why not, or its
    request for concurrency slots when it has a limited scope and holds none yet."""
    spec = unit.spec
    if spec.kind == "input":
        # a person's answer is its result: it is never placed on a node
        deadline = now + (spec.approval_timeout_ms or ctx.cfg.approval_timeout_ms)
        return deferred(ctx, unit, cause, now, "awaiting_input",
                        f"waiting for a person's answer (onceflow input {unit.session_id} "
                        f"{unit.work_unit_id}) until {deadline}", role=role, retry_at=deadline)
    if spec.requires_approval and not unit.approved:
        deadline = now + (spec.approval_timeout_ms or ctx.cfg.approval_timeout_ms)
        return deferred(ctx, unit, cause, now, "awaiting_approval",
                        f"waiting for a person to approve it (onceflow approve "
                        f"{unit.work_unit_id}) until {deadline}; then it fails closed",
                        role=role, retry_at=deadline)
    holder = paused_by(state, unit)
    if holder is not None:
        return deferred(ctx, unit, cause, now, "paused",
                        f"{holder} is paused by an operator; `onceflow resume` places it again",
                        role=role)
    scope = scope_of(spec)
    if scope is not None:
        until = paused_until(state, scope)
        if until > now:
            return deferred(ctx, unit, cause, now, "provider_paused",
                            f"{scope} is paused until {until}: its provider asked to be "
                            "called again then", role=role, retry_at=until)
    request = request_slots(ctx, unit, cause, now, role)
    if request is not None:
        return request
    memory = PlacementMemory.load(state)
    streak = Streak(memory.node, memory.streak)
    result = place(
        PlacementRequest(spec.kind, spec.region, spec.required_concurrency,
                         spec.min_runtime_version),
        ctx.view.placeable(now, ctx.cfg.breaker_probe_interval_ms), ctx.view.trust, now, streak,
        ctx.cfg,
    )
    code = result.reason_code
    if result.selected is None or code == "no_eligible_node":
        counts = ", ".join(f"{k}={v}" for k, v in result.filter_counts.items()) or "no nodes"
        return deferred(ctx, unit, cause, now, "no_eligible_node",
                        f"no node can take it ({counts})", role=role,
                        filter_counts=result.filter_counts)
    chosen = result.selected
    ctx.view.note_dispatch(chosen.node_id, unit.work_unit_id, spec.required_concurrency, now)
    return WorkUnitScheduled(
        **ctx.envelope(unit, cause, role, now),
        selected_node_id=chosen.node_id,
        attempt_index=unit.attempt + 1,
        score=chosen.score,
        eligible_node_count=result.eligible,
        reason_code=code,
        scheduling_epoch=memory.epoch + 1,
        decided_at=now,
        lease_expires_at=now + ctx.cfg.claim_timeout_ms,
        candidates=result.candidates[:RECORDED_CANDIDATES],
        kind=spec.kind, priority=spec.priority, effect=spec.effect,
        idempotency_class=spec.idempotency_class,
        idempotency_key=idempotency_key_for(unit.work_unit_id),
        handler=spec.handler, simulated_ms=spec.simulated_ms,
        prompt=spec.prompt, model=spec.model,
        input_ref=spec.input_ref, parameters=spec.parameters,
        parent_result_refs=[ref for p in spec.depends_on
                            if (ref := unit.parents.get(p)) is not None],
        streak_node_id=streak.node_id, streak_length=streak.length,
        admission_mode=ctx.view.mode,
        tenant_correlation_id=spec.correlation_id,
    )


def on_slot_granted(ctx: SchedulerContext, state: State, event: SlotGranted
                    ) -> Sequence[Event]:
    """The limiter's grant: place the unit now.

    The placement (or the deferral, when no node can take it yet) is what
    records that the slots arrived: it is the only way out of
    `waiting_for_slot` besides a cancel, so folding it sets `slots` (see
    `_left_waiting_for_slot`). One fact per grant, not two.
    """
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "waiting_for_slot":
        return ()  # a grant seen again, or for a unit that gave its request back
    now = event.occurred_at
    holder = paused_by(state, unit)
    if holder is not None:
        # paused while it waited: it gives its slots back and waits for the resume
        return [deferred(ctx, unit, event, now, "paused", f"{holder} is paused by an operator",
                         role="placed"),
                *release_slots(ctx, unit, event, now, "cancelled")]
    if event.not_before > now:
        # a rate window's turn: the unit holds its slots and is placed when it comes
        return (deferred(ctx, unit, event, now, "rate_limited",
                         f"rate limit: its turn in {', '.join(sorted(event.rate_levels))} "
                         f"comes at {event.not_before}", role="placed",
                         retry_at=event.not_before),)
    return (placed(ctx, state, unit.but(slots=True), event, now, "placed"),)


# -- evolve ----------------------------------------------------------------------------


def _left_waiting_for_slot(unit: UnitRecord) -> bool:
    """Whether a unit holds slots once placed (or deferred) from its state before: a unit
    placed out of `waiting_for_slot` was placed on its grant."""
    return unit.slots or unit.status == "waiting_for_slot"


def evolve_submitted(ctx: SchedulerContext, state: State, fact: WorkUnitSubmitted) -> None:
    memo_id, unit = ctx.admitted
    if unit is None or memo_id != fact.event_id:
        unit = UnitRecord.submitted(fact, payload_digest(fact))
    ctx.save(state, None, unit)
    forget_orphan(state, unit.work_unit_id)


def evolve_scheduled(ctx: SchedulerContext, state: State, unit: UnitRecord,
                     fact: WorkUnitScheduled) -> UnitRecord:
    memory = PlacementMemory.load(state)
    streak = Streak(memory.node, memory.streak).after(fact.selected_node_id)
    PlacementMemory(streak.node_id, streak.length,
                    max(memory.epoch, fact.scheduling_epoch)).save(state)
    return unit.but(status="scheduled", attempt=fact.attempt_index, node=fact.selected_node_id,
                    incarnation="", staged=False, decided_at=fact.decided_at,
                    deadline=fact.lease_expires_at, reason="",
                    dispatch_event_id=fact.event_id, slots=_left_waiting_for_slot(unit))


def evolve_deferred(ctx: SchedulerContext, state: State, unit: UnitRecord,
                    fact: WorkUnitDeferred) -> UnitRecord:
    waiting = fact.reason_code == "waiting_on_parents" or fact.reason_code in WAITING_FOR_A_PERSON
    return unit.but(status="waiting" if waiting else "deferred", reason=fact.reason_code,
                    decided_at=fact.decided_at, retry_at=fact.retry_at or 0,
                    slots=_left_waiting_for_slot(unit))


def evolve_rejected(ctx: SchedulerContext, state: State, unit: UnitRecord,
                    fact: WorkUnitRejected) -> UnitRecord | None:
    if fact.reason_code in ("duplicate_id_different_payload", "beyond_horizon"):
        return None  # the original unit is untouched (or long forgotten)
    return unit.but(status="rejected", reason=fact.reason_code)


# -- route -----------------------------------------------------------------------------


def route_scheduled(ctx: SchedulerContext, fact: WorkUnitScheduled) -> Sequence[Routed]:
    # The node needs the work, not the decision record: the candidates stay in
    # the fact topic and the dispatch copy is lighter to move.
    slim = fact.model_copy(update={"candidates": []})
    return (Routed(ctx.dispatch.name, slim, ctx.dispatch.partition_of(fact.selected_node_id)),)
