"""Concurrency slots, the scheduler's side: ask the limiter before placing, give back after.

A unit in a limited scope (`onceflow.streams.limits`) is placed only once the
limiter granted it a slot in each of its scopes; until then it waits as
`waiting_for_slot` (its queue place, scope, count and limit recorded when the
limiter queues it). It gives the slots back when its attempt ends (completion,
failure, a lease that ran out, a provider's backoff) or when it is cancelled;
a unit re-placed after an unclaimed dispatch keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from onceflow.schemas import (
    Event,
    RetryRequested,
    SlotQueued,
    SlotReleased,
    SlotReleaseReason,
    SlotRequested,
    WorkUnitCompleted,
)
from onceflow.streams.ids import caused_by, restated
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.unit import UnitRecord
from onceflow.streams.types import Routed, State

__all__ = [
    "evolve_slot_queued",
    "evolve_slot_released",
    "evolve_slot_requested",
    "held_against_budget",
    "on_slot_queued",
    "release_on_completion",
    "release_slots",
    "request_slots",
    "route_to_limiter",
    "scopes_of",
]


def scopes_of(ctx: SchedulerContext, unit: UnitRecord) -> list[str]:
    spec = unit.spec
    return ctx.limits.scopes_for(
        tenant=unit.tenant_id, session=unit.session_id, kind=spec.kind,
        provider=spec.parameters.get("provider") or ctx.default_provider, model=spec.model,
        tool=spec.handler)


def held_against_budget(ctx: SchedulerContext, unit: UnitRecord) -> bool:
    """Whether a unit is held against a budget or limits: its tenant's prepaid credit, its
    session's budget or its session's execution limits."""
    return ctx.budgets and (unit.tenant_id in ctx.prepaid
                            or unit.spec.session_budget is not None
                            or unit.spec.session_limits is not None)


def request_slots(ctx: SchedulerContext, unit: UnitRecord, cause: Event, now: int,
                  role: str) -> SlotRequested | None:
    """The request a unit must make before it is placed (None: it needs none)."""
    if unit.slots:
        return None
    scopes = scopes_of(ctx, unit)
    budgeted = held_against_budget(ctx, unit)
    if not scopes and not budgeted:
        return None
    estimate = ctx.estimator.estimate(unit.spec) if ctx.estimator else None
    limits = unit.spec.session_limits if ctx.budgets else None
    return SlotRequested(**ctx.envelope(unit, cause, f"{role}:slots", now),
                         attempt_index=unit.attempt + 1, scopes=scopes,
                         priority=unit.spec.priority,
                         # its weight in fair queuing: billing's estimate, recorded here
                         cost=float(estimate) if estimate is not None else 1.0,
                         # the most it may cost: CPU for its lease, input, `max_tokens` out
                         hold_usd=(ctx.estimator.maximum(unit.spec)
                                   if budgeted and ctx.estimator else Decimal(0)),
                         session_budget_usd=unit.spec.session_budget,
                         tokens=(ctx.estimator.rate_tokens(unit.spec)
                                 if ctx.estimator and ctx.limits.tokens_per_minute else 0),
                         kind=unit.spec.kind, session_limits=limits,
                         session_tokens=(ctx.estimator.max_tokens(unit.spec)
                                         if limits is not None and limits.max_tokens
                                         and ctx.estimator else 0))


def release_slots(ctx: SchedulerContext, unit: UnitRecord, cause: Event, now: int,
                  reason: SlotReleaseReason) -> list[Event]:
    """Give a unit's slots (or its place in the limiter's queue) back; nothing if it has none."""
    if not unit.slots and unit.status != "waiting_for_slot":
        return []
    return [SlotReleased(**ctx.envelope(unit, cause, "slots-released", now), reason=reason)]


def release_on_completion(ctx: SchedulerContext, fact: WorkUnitCompleted) -> Sequence[Routed]:
    """An accepted completion gives the unit's slots back as it is routed, not as a fact of
    its own: the unit is done, so its record need not say it holds none (one fact fewer on
    the hot path). The limiter ignores a release of a unit that holds nothing."""
    if not ctx.slots_counted:
        return ()
    release = SlotReleased(**caused_by(fact, "slots-released"), reason="completed")
    return (Routed(ctx.limits_topic.name, release, 0),)


def on_slot_queued(ctx: SchedulerContext, state: State, event: SlotQueued) -> Sequence[Event]:
    """The limiter queued the request: record why, in the unit's log."""
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "waiting_for_slot" or unit.reason in (
            "concurrency_limited", "budget_wait"):
        return ()
    return (restated(event, "queue-recorded"),)


def evolve_slot_requested(ctx: SchedulerContext, state: State, unit: UnitRecord,
                          fact: SlotRequested) -> UnitRecord:
    return unit.but(status="waiting_for_slot", reason="waiting_for_slot",
                    decided_at=fact.occurred_at)


def evolve_slot_queued(ctx: SchedulerContext, state: State, unit: UnitRecord,
                       fact: SlotQueued) -> UnitRecord:
    budget = fact.scope.startswith("budget:")
    return unit.but(reason="budget_wait" if budget else "concurrency_limited")


def evolve_slot_released(ctx: SchedulerContext, state: State, unit: UnitRecord,
                         fact: SlotReleased) -> UnitRecord:
    return unit.but(slots=False)


def route_to_limiter(ctx: SchedulerContext, fact: SlotRequested | SlotReleased | RetryRequested
                     ) -> Sequence[Routed]:
    return (Routed(ctx.limits_topic.name, fact, 0),)
