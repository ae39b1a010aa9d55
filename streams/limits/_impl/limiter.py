"""The limiter: concurrency slots, rate windows, budget holds, sessions' limits and tenants'
retry budgets, for every scheduler partition, on one partition.

Limits span every scheduler partition (a tenant's or a provider's units live in
all of them), so their counts have a single writer: this reducer, over the
one-partition `limits` topic where schedulers ask for slots and retries and give
slots back, and where the ledger tells what it billed. Its facts (`flow`) are
its changelog and carry what they change (rate levels after the take), so a
replay counts the same whatever the configuration.

This module wires the concerns, one module each: `grants` (slots and the
queue), `budgets`, `rates`, `session_limits`, `retries`, `retention`; the
state's keys and records are in `records`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from onceflow.schemas import (
    BudgetSettled,
    ControlAction,
    ControlRequested,
    Event,
    LedgerLineItem,
    LedgerUnitSettled,
    RetryDenied,
    RetryGranted,
    RetryRequested,
    Scope,
    SessionLimitCrossed,
    SessionLimitsChanged,
    SessionLimitsSet,
    SlotDenied,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotRequested,
    StateRetired,
)
from onceflow.streams.ids import derive_event_id
from onceflow.streams.limits._impl import budgets, rates, retention, session_limits
from onceflow.streams.limits._impl.budgets import Budget, charge, evolve_settled
from onceflow.streams.limits._impl.grants import (
    Grants,
    evolve_granted,
    evolve_queued,
    evolve_unqueued,
)
from onceflow.streams.limits._impl.records import Tentative, in_use
from onceflow.streams.limits._impl.retries import RetryBudget
from onceflow.streams.limits._impl.scopes import ScopeLimits
from onceflow.streams.limits._impl.sessions import LIMITS_ACTOR
from onceflow.streams.topics.catalog import Topic
from onceflow.streams.types import Reducer, Routed, State

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["Budget", "Limiter", "rate_window_level"]

rate_window_level = rates.rate_window_level

Decide = Callable[["Limiter", State, Any], Sequence[Event]]
Evolve = Callable[["Limiter", State, Any], None]
Route = Callable[["Limiter", Any], Sequence[Routed]]


class Limiter(Reducer):
    name = "limiter"
    accepts = frozenset({"flow.slot.requested", "flow.slot.released", "ledger.line_item",
                         "ledger.unit.settled", "flow.session.limits.set",
                         "flow.retry.requested"})
    #: release 6 typed the state (records.py): a store of an older release is rebuilt
    state_layout = "limiter-6"

    def __init__(self, limits: ScopeLimits, reports: Topic, queue_scan: int = 256,
                 credits: Mapping[str, Decimal] | None = None, *, horizon_ms: int = 0,
                 retries: RetryBudget | None = None) -> None:
        self.reports = reports
        self.queue_scan = queue_scan
        #: each prepaid tenant's credit: what its charges and holds may not exceed
        self.credits = dict(credits or {})
        self.limits = limits
        #: a session's account is forgotten once idle this long (0: never): the session
        #: is over (`LimitsSettings.session_idle_ms`)
        self.horizon_ms = horizon_ms
        #: each tenant's retry budget (Krako 2.0's numbers unless configured)
        self.retries = retries or RetryBudget()

    @property
    def limits(self) -> ScopeLimits:
        return self.grants.limits

    @limits.setter
    def limits(self, limits: ScopeLimits) -> None:
        self.grants = Grants(limits, self.credits, self.queue_scan)

    @classmethod
    def from_settings(cls, settings: StreamsSettings) -> Limiter:
        """The limiter as a deployment configures it."""
        from onceflow.streams.topics.catalog import TopicCatalog

        return cls(ScopeLimits.from_settings(settings.limits), TopicCatalog(settings)["reports"],
                   settings.limits.queue_scan,
                   {t: Decimal(c) for t, c in settings.prepaid_credits.items()},
                   horizon_ms=settings.limits.session_idle_ms,
                   retries=RetryBudget(settings.scheduler.retry_budget,
                                       settings.scheduler.retry_budget_per_minute))

    # -- decide ------------------------------------------------------------------------

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        handler = _DECIDE.get(type(event))
        facts = () if handler is None else handler(self, state, event)
        if not self.horizon_ms:
            return facts
        # a session this decision moves is not idle (decide sees the state from before)
        moved = {Scope.of_session(f.tenant_id, f.execution_session_id).session_key
                 for f in (event, *facts)}
        retired = retention.idle_sessions(state, event, moved, self.horizon_ms, self.name)
        return facts if retired is None else [*facts, retired]

    def _on_ledger(self, state: State, event: LedgerLineItem | LedgerUnitSettled
                   ) -> Sequence[Event]:
        """What the ledger billed counts against the budgets; a hold that ends may let
        waiting requests in."""
        facts: list[Event] = []
        charged, released = charge(self.limits, self.credits, state, event)
        facts.extend(charged)
        if released is None:
            return facts
        facts.append(released.fact)
        if released.fact.released_usd or released.fact.released_tokens:
            t = Tentative(reserved=dict(released.reserved))
            if released.session_usage is not None:
                t.usage[str(released.session_usage.scope)] = released.session_usage
            facts.extend(self.grants.scan(state, event, t))
        return facts

    # -- evolve ------------------------------------------------------------------------

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, StateRetired):
            retention.evolve_retired(state, fact)
            return
        handler = _EVOLVE.get(type(fact))
        if handler is not None:
            handler(self, state, fact)
        if self.horizon_ms:
            retention.touch(state, fact)

    # -- route -------------------------------------------------------------------------

    def route(self, fact: Event) -> Sequence[Routed]:
        handler = _ROUTE.get(type(fact))
        return () if handler is None else handler(self, fact)

    def _to_unit(self, fact: Event) -> Sequence[Routed]:
        """An answer about a unit, to its scheduler partition."""
        wu = fact.work_unit_id or ""
        return (Routed(self.reports.name, fact, self.reports.partition_of(wu)),)

    def _control(self, fact: Event, action: ControlAction, reason: str) -> Sequence[Routed]:
        """A session's pause, cancel or resume, to the schedulers (one records it and sends it
        on to every partition)."""
        session = fact.execution_session_id
        control = ControlRequested(
            event_id=derive_event_id(fact.event_id, f"control:{action}"),
            occurred_at=fact.occurred_at, tenant_id=fact.tenant_id,
            execution_session_id=session, causation_id=fact.event_id,
            action=action, scope="session", requested_by=LIMITS_ACTOR, reason=reason)
        return (Routed(self.reports.name, control, self.reports.partition_of(session)),)

    def _limit_reached(self, fact: SessionLimitCrossed) -> Sequence[Routed]:
        if fact.threshold != "reached":
            return ()
        return self._control(fact, "pause" if fact.on_limit == "park" else "cancel",
                             fact.detail)

    def _limits_raised(self, fact: SessionLimitsChanged) -> Sequence[Routed]:
        if not fact.resumed:
            return ()
        # the limits actor resumes what it parked; the operator who raised them is named
        return self._control(fact, "resume", f"limits raised by {fact.requested_by}"
                             + (f": {fact.reason}" if fact.reason else ""))

    # -- reading the state (`onceflow limits`) --------------------------------------------

    def waiting_on(self, state: State) -> list[tuple[str, str]]:
        """Each waiting request's unit and the scope that holds it, in queue order."""
        return self.grants.waiting_on(state)

    def budgets(self, state: State) -> list[Budget]:
        """Every budget the limiter keeps (tenants with credit, sessions with a budget)."""
        return budgets.budgets(self.credits, state)

    def rate_windows(self, state: State, now: int) -> list[dict[str, Any]]:
        """Each rate window in use: its limit a minute and what it holds at `now`."""
        return rates.rate_windows(self.limits, state, now)

    def slots_in_use(self, state: State) -> dict[str, int]:
        """Each scope with slots in use, and how many."""
        return {key.removeprefix("s:"): in_use(state, key.removeprefix("s:"))
                for key, _ in state.items("s:")}


_DECIDE: dict[type[Event], Decide] = {
    SlotRequested: lambda lim, state, e: lim.grants.on_request(state, e),
    SlotReleased: lambda lim, state, e: lim.grants.on_release(state, e),
    LedgerLineItem: Limiter._on_ledger,
    LedgerUnitSettled: Limiter._on_ledger,
    SessionLimitsSet: lambda lim, state, e: session_limits.on_limits_set(lim.credits, state, e),
    RetryRequested: lambda lim, state, e: (lim.retries.decide(state, e),),
}

_EVOLVE: dict[type[Event], Evolve] = {
    SlotGranted: lambda lim, state, f: evolve_granted(state, f),
    SlotQueued: lambda lim, state, f: evolve_queued(state, f),
    SlotReleased: lambda lim, state, f: evolve_unqueued(state, f),
    SlotDenied: lambda lim, state, f: evolve_unqueued(state, f),
    BudgetSettled: lambda lim, state, f: evolve_settled(state, f),
    SessionLimitCrossed: lambda lim, state, f: session_limits.evolve_crossed(state, f),
    SessionLimitsChanged: lambda lim, state, f: session_limits.evolve_limits_changed(state, f),
    RetryGranted: lambda lim, state, f: lim.retries.evolve(state, f),
}

_ROUTE: dict[type[Event], Route] = {
    SlotGranted: Limiter._to_unit,
    SlotQueued: Limiter._to_unit,
    SlotDenied: Limiter._to_unit,
    RetryGranted: Limiter._to_unit,
    RetryDenied: Limiter._to_unit,
    SessionLimitCrossed: Limiter._limit_reached,
    SessionLimitsChanged: Limiter._limits_raised,
}
