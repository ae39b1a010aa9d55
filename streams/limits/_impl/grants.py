"""Grants and the queue: a request is granted at once in every one of its scopes, or waits
in the queue, or (a budget its charges have already spent) is denied.

- *concurrency*: a slot in each limited scope, given back when the attempt ends;
- *rates* and *budgets*: see `rates` and `budgets`; a session's limits, see
  `session_limits`.

A request that waits is queued by priority, then by its finish tag in
start-time fair queuing between tenants, then by arrival; a release or a
settled hold scans the queue (a bounded look) and grants what now fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from onceflow.schemas import (
    Event,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotRequested,
)
from onceflow.streams.ids import caused_by, restated
from onceflow.streams.limits._impl.budgets import (
    budget_wait,
    budgets_of,
    denial,
    evolve_held,
    session_cost,
)
from onceflow.streams.limits._impl.rates import evolve_levels, rate_take
from onceflow.streams.limits._impl.records import (
    QUEUE_PREFIX,
    ZERO,
    QueuedRequest,
    SlotRequest,
    SlotsHeld,
    Tentative,
    UnitHold,
    in_use,
    queue_key,
    set_in_use,
)
from onceflow.streams.limits._impl.scopes import ScopeLimits
from onceflow.streams.limits._impl.session_limits import (
    at_limit,
    crossed,
    request_envelope,
    session_limit,
    usage_of,
)
from onceflow.streams.limits._impl.sessions import SessionUsage
from onceflow.streams.types import State

__all__ = ["Blocked", "Grants", "evolve_granted", "evolve_queued", "evolve_unqueued",
           "unqueue"]


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why a request cannot be granted now: the scope (or `budget:<scope>`), its count and
    limit where it has them, and the rule with its numbers."""

    scope: str
    in_use: int
    limit: int
    detail: str


@dataclass(frozen=True)
class Grants:
    """The rules of granting, with the deployment's limits and credits."""

    limits: ScopeLimits
    credits: Mapping[str, Decimal]
    queue_scan: int

    def full(self, state: State, scopes: Sequence[str], t: Tentative) -> Blocked | None:
        """The first scope with no free slot, with its count and limit (None: all fit)."""
        for scope in scopes:
            limit = self.limits.limit_of(scope)
            if limit is None:
                continue
            used = t.slots.get(scope, in_use(state, scope))
            if used >= limit:
                return Blocked(scope, used, limit, f"{scope}: {used} of {limit} running")
        return None

    def blocked(self, state: State, req: SlotRequest, t: Tentative) -> Blocked | None:
        """Why a request cannot be granted now (None: it can)."""
        waits = budget_wait(self.credits, state, req, t)
        if waits is not None:
            return Blocked(f"budget:{waits[0]}", 0, 0, waits[1])
        usage = usage_of(state, req, t)
        if usage is not None:
            wait = usage.tokens_wait(req)
            if wait is not None:
                return Blocked(f"budget:tokens:{usage.scope.session_key}", 0, 0, wait)
        return self.full(state, req.scopes, t)

    # -- decide -------------------------------------------------------------------------

    def on_request(self, state: State, event: SlotRequested) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        held = SlotsHeld.load(state, wu)
        if held is not None:
            # asked again (a recovery re-sent it): the unit has its slots; say so again
            return (SlotGranted(**caused_by(event, "granted"), attempt_index=event.attempt_index,
                                scopes=list(held.scopes)),)
        if state.get(_waiting_key(wu)) is not None:
            return ()  # already waiting
        req = SlotRequest.of(event, budgeted=event.tenant_id in self.credits)
        t = Tentative()
        limit = session_limit(self.credits, state, req, event.occurred_at, t)
        if limit is not None:
            return at_limit(event, req, *limit, t)
        denied = denial(self.credits, state, req, t, request_envelope(event, req, "denied"))
        if denied is not None:
            return (denied,)
        blocked = self.blocked(state, req, t)
        if blocked is None:
            return self.grant(state, event, req, event.occurred_at, t, waited_ms=0)
        # Start-time fair queuing: a tenant's requests follow one another in virtual time,
        # each as long as its cost over the tenant's weight; the queue is read by
        # priority, then by finish tag, so a tenant with many (or costly) units waits
        # behind its own backlog, not in front of everyone else.
        start = max(state.get("vt", 0.0), state.get(f"vf:{event.tenant_id}", 0.0))
        finish = start + event.cost / self.limits.weight_of(event.tenant_id)
        return (SlotQueued(**caused_by(event, "queued"),
                           attempt_index=event.attempt_index, scopes=event.scopes,
                           scope=blocked.scope, in_use=blocked.in_use, limit=blocked.limit,
                           position=state.get("seq", 0), priority=event.priority,
                           fair_start=round(start, 9), fair_finish=round(finish, 9),
                           detail=blocked.detail, hold_usd=event.hold_usd,
                           session_budget_usd=event.session_budget_usd, tokens=event.tokens,
                           budgeted=req.budgeted, kind=event.kind,
                           session_limits=event.session_limits,
                           session_tokens=event.session_tokens),)

    def grant(self, state: State, cause: Event, req: SlotRequest, now: int, t: Tentative,
              waited_ms: int) -> list[Event]:
        """Grant a request that fits, and note in `t` what it takes; with the warnings of
        its session's limits it brings to 80 %."""
        for s in req.scopes:
            t.slots[s] = t.slots.get(s, in_use(state, s)) + 1
        held = ZERO
        budget_scopes: list[str] = []
        if not UnitHold.held(state, req.work_unit_id):
            held = req.hold
            for b in budgets_of(self.credits, state, req.tenant, req.session,
                                req.session_budget, t):
                budget_scopes.append(b.scope)
                t.reserved[b.scope] = t.reserved.get(b.scope, ZERO) + held
        not_before, levels = rate_take(self.limits, state, req.scopes, req.tokens, now,
                                       t.levels)
        t.levels.update(levels)
        warnings: list[Event] = []
        usage = usage_of(state, req, t) if req.limits is not None else None
        if usage is not None:
            started = usage if usage.started_at >= 0 else replace(usage, started_at=now)
            after = started.after_grant(req.attempt, req.kind, req.session_tokens)
            cost = session_cost(self.credits, state, req.tenant, req.session,
                                req.session_budget, t, ZERO)
            for crossing in after.warnings(now, (cost[0] + cost[1], cost[2]) if cost else None):
                warnings.append(crossed(cause, req, after, crossing))
                after = replace(after, warned=(*after.warned, crossing.limit))
            t.usage[str(usage.scope)] = after
        return [SlotGranted(
            **request_envelope(cause, req, "granted"), attempt_index=req.attempt,
            scopes=list(req.scopes), waited_ms=waited_ms,
            not_before=not_before if not_before > now else 0,
            held_usd=held, budget_scopes=budget_scopes, session_budget_usd=req.session_budget,
            tokens=req.tokens, rate_levels=levels, kind=req.kind, session_limits=req.limits,
            session_tokens=req.session_tokens if usage is not None else 0), *warnings]

    def on_release(self, state: State, event: SlotReleased) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        held = SlotsHeld.load(state, wu)
        if held is None and state.get(_waiting_key(wu)) is None:
            return ()
        facts: list[Event] = [restated(event, "freed")]
        if held is None:
            return facts  # it gave up its place in the queue; no slot comes free
        t = Tentative(slots={s: in_use(state, s) - 1 for s in held.scopes})
        return [*facts, *self.scan(state, event, t, freed=held.scopes)]

    def scan(self, state: State, cause: Event, t: Tentative, freed: Sequence[str] = ()
             ) -> list[Event]:
        """Grant the waiting requests that now fit, in queue order (a bounded look).

        `freed`: the scopes a release gave a slot back in. Once each of them that
        has a limit is full again, nothing further can fit for this release's
        sake (whatever waits was blocked before it), so the look stops there.
        """
        limited = [s for s in freed if self.limits.limit_of(s) is not None]
        if not state.get("waiting", 0):
            return []  # nobody waits: nothing to scan for
        decided: list[Event] = []
        now = cause.occurred_at
        for looked, (_, raw) in enumerate(state.items(QUEUE_PREFIX)):
            if looked >= self.queue_scan:
                break
            waiting = QueuedRequest.from_state(raw)
            req = waiting.request
            limit = session_limit(self.credits, state, req, now, t)
            if limit is not None:
                decided.extend(at_limit(cause, req, *limit, t))
                continue
            blocked = self.blocked(state, req, t)
            if blocked is None:
                decided.extend(self.grant(state, cause, req, now, t,
                                          waited_ms=max(0, now - waiting.at)))
                if limited and all(self.full(state, [s], t) for s in limited):
                    break
            elif blocked.scope.startswith("budget:"):
                # charges since it queued may have left its budget too little for good
                denied = denial(self.credits, state, req, t,
                                request_envelope(cause, req, "denied"))
                if denied is not None:
                    decided.append(denied)
        return decided

    def waiting_on(self, state: State) -> list[tuple[str, str]]:
        """Each waiting request's unit and the scope that holds it, in queue order."""
        out = []
        for _, raw in state.items(QUEUE_PREFIX):
            req = QueuedRequest.from_state(raw).request
            blocked = self.blocked(state, req, Tentative())
            out.append((req.work_unit_id, blocked.scope if blocked else ""))
        return out


def _waiting_key(work_unit_id: str) -> str:
    return f"w:{work_unit_id}"


# -- evolve -------------------------------------------------------------------------------


def evolve_queued(state: State, fact: SlotQueued) -> None:
    seq: int = state.get("seq", 0)
    key = queue_key(fact.priority, fact.fair_finish, seq)
    request = SlotRequest.of(fact, budgeted=fact.budgeted)
    state.set(key, QueuedRequest(request, fact.occurred_at, fact.fair_start).to_state())
    state.set(_waiting_key(request.work_unit_id), key)
    state.set(f"vf:{fact.tenant_id}", fact.fair_finish)
    state.set("seq", seq + 1)
    state.set("waiting", state.get("waiting", 0) + 1)


def unqueue(state: State, work_unit_id: str) -> QueuedRequest | None:
    """Take a unit's request out of the queue; returns it (None: it was not waiting)."""
    key = state.get(_waiting_key(work_unit_id))
    if key is None:
        return None
    waiting = QueuedRequest.from_state(state.get(key))
    state.delete(key)
    state.delete(_waiting_key(work_unit_id))
    left = state.get("waiting", 0) - 1
    if left > 0:
        state.set("waiting", left)
    else:
        state.delete("waiting")
    return waiting


def evolve_unqueued(state: State, fact: Event) -> None:
    """A denial, or a release of a unit that only waited: it leaves the queue; a release
    of held slots gives them back."""
    wu = fact.work_unit_id or ""
    if isinstance(fact, SlotReleased):
        held = SlotsHeld.load(state, wu)
        if held is not None:
            for s in held.scopes:
                set_in_use(state, s, in_use(state, s) - 1)
            state.delete(SlotsHeld.key(wu))
    unqueue(state, wu)


def evolve_granted(state: State, fact: SlotGranted) -> None:
    wu = fact.work_unit_id or ""
    if SlotsHeld.load(state, wu) is None:
        for s in fact.scopes:
            set_in_use(state, s, in_use(state, s) + 1)
    if fact.session_limits is not None:
        usage = SessionUsage.load(state, fact.tenant_id, fact.execution_session_id) or \
            SessionUsage(fact.tenant_id, fact.execution_session_id, fact.session_limits,
                         started_at=-1)
        if usage.started_at < 0:
            usage = replace(usage, started_at=fact.occurred_at)
        usage.after_grant(fact.attempt_index, fact.kind, fact.session_tokens).save(state)
    SlotsHeld(tuple(fact.scopes), fact.attempt_index).save(state, wu)
    waiting = unqueue(state, wu)
    if waiting is not None:
        state.set("vt", max(state.get("vt", 0.0), waiting.start))
    evolve_levels(state, fact.rate_levels, fact.occurred_at)
    rated = tuple(sorted({w.split(":", 1)[1] for w in fact.rate_levels
                          if w.startswith("tpm:")}))
    hold = UnitHold.load(state, wu)
    if hold is None and not (fact.budget_scopes or rated or fact.session_tokens):
        return
    if hold is None:
        hold = UnitHold(tuple(fact.budget_scopes), fact.held_usd, 0, (), 0,
                        call="awaited" if fact.kind == "llm_pod" else "none")
        evolve_held(state, wu, fact.held_usd, fact.budget_scopes, fact.session_budget_usd)
    replace(hold, rate_tokens=hold.rate_tokens + (fact.tokens if rated else 0),
            rated=tuple(sorted(set(hold.rated) | set(rated))),
            session_tokens=hold.session_tokens + fact.session_tokens).save(state, wu)
