"""Sessions' execution limits, the limiter's rules: a request that would take its session
past a limit is not granted, and the session is parked or cancelled as its policy says.

What a session has used is a `SessionUsage` (`sessions`); its cost is its session
budget's (`budgets`). An operator's new limits resume a parked session that they
leave room for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, cast

from onceflow.schemas import (
    Event,
    SessionLimitCrossed,
    SessionLimitName,
    SessionLimitsChanged,
    SessionLimitsSet,
    SlotDenied,
)
from onceflow.streams.ids import caused_by
from onceflow.streams.limits._impl.budgets import session_cost
from onceflow.streams.limits._impl.records import (
    ZERO,
    BudgetAccount,
    SlotRequest,
    Tentative,
    UnitHold,
    usd,
)
from onceflow.streams.limits._impl.sessions import LimitCrossing, SessionUsage
from onceflow.streams.types import State

__all__ = ["at_limit", "crossed", "evolve_crossed", "evolve_limits_changed", "on_limits_set",
           "request_envelope", "session_limit", "usage_of"]


def request_envelope(cause: Event, req: SlotRequest, role: str) -> dict[str, Any]:
    """A fact about the requesting unit: the request's own, or one a release decided."""
    wu = req.work_unit_id
    if cause.work_unit_id == wu:
        return caused_by(cause, role)
    return caused_by(cause, f"{role}:{wu}", tenant_id=req.tenant,
                     execution_session_id=req.session, work_unit_id=wu)


def usage_of(state: State, req: SlotRequest, t: Tentative) -> SessionUsage | None:
    """What the request's session has used, with this decision's grants (None: the session
    has no limits)."""
    key = str(req.session_scope)
    usage: SessionUsage | None = t.usage.get(key)
    if usage is not None:
        return usage
    usage = SessionUsage.load(state, req.tenant, req.session)
    if usage is None and req.limits is not None:
        usage = SessionUsage(req.tenant, req.session, req.limits, started_at=-1)
    return usage


def session_limit(credits: Mapping[str, Decimal], state: State, req: SlotRequest, now: int,
                  t: Tentative) -> tuple[SessionUsage, LimitCrossing] | None:
    """The limit granting `req` would take its session past (None: none, or no limits)."""
    usage = usage_of(state, req, t)
    if usage is None:
        return None
    if usage.reached:
        return usage, LimitCrossing(cast(SessionLimitName, usage.reached), "reached", "", "")
    if usage.started_at >= 0:
        crossing = usage.reached_by(req, now)
        if crossing is not None:
            return usage, crossing
    if not UnitHold.held(state, req.work_unit_id):
        cost = session_cost(credits, state, req.tenant, req.session, req.session_budget, t,
                            ZERO)
        hold = req.hold
        if cost is not None and (cost[0] + hold > cost[2] or (not hold and cost[0] >= cost[2])):
            return usage, LimitCrossing(
                "max_cost_usd", "reached", f"{usd(cost[0])} charged",
                f"{usd(cost[2])} (this step may cost {usd(hold)})")
    return None


def crossed(cause: Event, req: SlotRequest, usage: SessionUsage, crossing: LimitCrossing
            ) -> SessionLimitCrossed:
    name = usage.scope.session_key
    return SessionLimitCrossed(
        **caused_by(cause, f"limit:{name}:{crossing.limit}:{crossing.threshold}",
                    tenant_id=usage.tenant, execution_session_id=usage.session,
                    work_unit_id=req.work_unit_id),
        limit=crossing.limit, threshold=crossing.threshold, used=crossing.used,
        maximum=crossing.maximum, on_limit=usage.limits.on_limit,
        detail=f"session {name} {crossing.detail}", steps=usage.steps,
        attempts=usage.attempts, llm_calls=usage.llm_calls)


def at_limit(cause: Event, req: SlotRequest, usage: SessionUsage, crossing: LimitCrossing,
             t: Tentative) -> list[Event]:
    """The request is not granted: its session is at a limit (recorded once), parked or
    cancelled as its policy says."""
    facts: list[Event] = []
    policy = usage.limits.on_limit
    name = usage.scope.session_key
    if not usage.reached and name not in t.reached:
        t.reached.add(name)
        facts.append(crossed(cause, req, usage, crossing))
        reason = f"session {name} {crossing.detail}"
    else:
        reason = f"session {name} is at its {crossing.limit} limit"
    then = ("parked: raise it (onceflow session limits) or cancel it" if policy == "park"
            else "cancelled")
    facts.append(SlotDenied(
        **request_envelope(cause, req, "denied"), attempt_index=req.attempt,
        reason_code="SESSION_LIMIT", scope=str(usage.scope),
        reason=f"{reason}; {then}", on_limit=policy))
    return facts


def on_limits_set(credits: Mapping[str, Decimal], state: State, event: SessionLimitsSet
                  ) -> Sequence[Event]:
    """An operator's new limits for a session; a parked session with room now goes on."""
    usage = SessionUsage.load(state, event.tenant_id, event.execution_session_id)
    resumed = False
    if usage is not None and usage.reached:
        raised = SessionUsage(usage.tenant, usage.session, event.session_limits,
                              usage.started_at, usage.steps, usage.attempts,
                              usage.llm_calls, usage.tokens, usage.tokens_held)
        cost = None
        budget = event.session_limits.max_cost_usd
        if budget is not None:
            spent = session_cost(credits, state, event.tenant_id, event.execution_session_id,
                                 None, Tentative(), ZERO)
            cost = (spent[0] if spent else ZERO, budget)
        resumed = raised.room_left(event.occurred_at, cost)
    return (SessionLimitsChanged(
        **caused_by(event, "limits-changed"), session_limits=event.session_limits,
        requested_by=event.requested_by, reason=event.reason, resumed=resumed),)


def evolve_crossed(state: State, fact: SessionLimitCrossed) -> None:
    usage = SessionUsage.load(state, fact.tenant_id, fact.execution_session_id)
    if usage is not None and fact.threshold == "warning":
        replace(usage, warned=(*usage.warned, fact.limit)).save(state)
    elif usage is not None:
        replace(usage, reached=fact.limit).save(state)


def evolve_limits_changed(state: State, fact: SessionLimitsChanged) -> None:
    tenant, session = fact.tenant_id, fact.execution_session_id
    usage = SessionUsage.load(state, tenant, session) or SessionUsage(
        tenant, session, fact.session_limits, started_at=-1)
    # the warnings start over: each is recorded again at 80 % of the new limit
    replace(usage, limits=fact.session_limits, warned=(),
            reached="" if fact.resumed else usage.reached).save(state)
    budget = fact.session_limits.max_cost_usd
    if budget is not None:
        account = BudgetAccount.load_or_new(state, str(usage.scope))
        replace(account, budget=budget).save(state)
