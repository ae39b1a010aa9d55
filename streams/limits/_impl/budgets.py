"""Budgets: a unit's maximum cost held against its tenant's credit and its session's
budget until the ledger bills it.

A unit that fits only once other holds settle waits in the queue; one whose
budget its charges have already spent is denied for good (`BUDGET_EXCEEDED`).
What the ledger bills counts as charged and corrects the token windows; the
unit's settlement ends its hold, which may let waiting requests in (the
limiter then scans its queue).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from onceflow.schemas import (
    BudgetSettled,
    Event,
    LedgerLineItem,
    LedgerUnitSettled,
    Scope,
    SlotDenied,
    weighted_tokens,
)
from onceflow.streams.ids import caused_by
from onceflow.streams.limits._impl.rates import rate_window_level
from onceflow.streams.limits._impl.records import (
    ZERO,
    BudgetAccount,
    SlotRequest,
    Tentative,
    UnitHold,
    usd,
)
from onceflow.streams.limits._impl.scopes import ScopeLimits
from onceflow.streams.limits._impl.sessions import SessionUsage
from onceflow.streams.types import State

__all__ = ["Budget", "Release", "budget_wait", "budgets", "budgets_of", "charge", "denial",
           "evolve_held", "evolve_settled", "release", "session_cost"]


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's credit or a session's budget, with what is charged and held against it."""

    scope: str
    budget: Decimal
    charged: Decimal = ZERO
    reserved: Decimal = ZERO

    @property
    def available(self) -> Decimal:
        return self.budget - self.charged - self.reserved

    def as_json(self) -> dict[str, str]:
        return {"scope": self.scope, "budget_usd": usd(self.budget),
                "charged_usd": usd(self.charged), "reserved_usd": usd(self.reserved),
                "available_usd": usd(self.available)}


def _budget(state: State, scope: str, budget: Decimal, t: Tentative) -> Budget:
    account = BudgetAccount.load_or_new(state, scope)
    return Budget(scope, budget, account.charged,
                  account.reserved + t.reserved.get(scope, ZERO))


def budgets_of(credits: Mapping[str, Decimal], state: State, tenant: str, session: str,
               requested: Decimal | None, t: Tentative) -> list[Budget]:
    """The budgets a unit of this tenant and session is held against (`requested`: the
    session budget its submission named)."""
    out = []
    credit = credits.get(tenant)
    if credit is not None:
        out.append(_budget(state, str(Scope.of_tenant(tenant)), credit, t))
    scope = str(Scope.of_session(tenant, session))
    stored = BudgetAccount.load(state, scope)
    session_budget = requested
    if stored is not None and stored.budget is not None:
        session_budget = stored.budget  # the first submission's word stands
    if session_budget is not None:
        out.append(_budget(state, scope, session_budget, t))
    return out


def session_cost(credits: Mapping[str, Decimal], state: State, tenant: str, session: str,
                 requested: Decimal | None, t: Tentative, hold: Decimal
                 ) -> tuple[Decimal, Decimal, Decimal] | None:
    """The session budget's (charged, reserved with `hold`, budget); None: it has none."""
    for b in budgets_of(credits, state, tenant, session, requested, t):
        if Scope.parse(b.scope).kind == "session":
            return b.charged, b.reserved + hold, b.budget
    return None


def budget_wait(credits: Mapping[str, Decimal], state: State, req: SlotRequest, t: Tentative
                ) -> tuple[str, str] | None:
    """The budget a request waits for other holds to settle in, and why (None: it fits)."""
    if UnitHold.held(state, req.work_unit_id) or not (req.hold or req.budgeted):
        return None
    for b in budgets_of(credits, state, req.tenant, req.session, req.session_budget, t):
        if b.charged + b.reserved + req.hold > b.budget:
            return b.scope, (f"{b.scope}: {usd(req.hold)} USD to hold, {usd(b.available)} "
                             f"USD available (budget {usd(b.budget)}, charged "
                             f"{usd(b.charged)}, held for running units {usd(b.reserved)})")
    return None


def denial(credits: Mapping[str, Decimal], state: State, req: SlotRequest, t: Tentative,
           envelope: dict[str, object]) -> SlotDenied | None:
    """The denial of a request whose maximum cost its budget's charges leave no room for
    (None: it fits, now or once other holds settle)."""
    if UnitHold.held(state, req.work_unit_id):
        return None  # held already (a retry): it fitted
    hold = req.hold
    for b in budgets_of(credits, state, req.tenant, req.session, req.session_budget, t):
        if b.charged + hold > b.budget or (not hold and b.charged >= b.budget):
            return SlotDenied(
                **envelope, attempt_index=req.attempt,  # type: ignore[arg-type]
                reason_code="BUDGET_EXCEEDED", scope=b.scope, budget_usd=b.budget,
                charged_usd=b.charged, reserved_usd=b.reserved, hold_usd=hold,
                reason=(f"{b.scope}: the unit may cost up to {usd(hold)} USD and "
                        f"{usd(b.budget - b.charged)} USD of its budget "
                        f"{usd(b.budget)} USD is left (charged {usd(b.charged)}); "
                        "raise the budget or submit smaller work (lower max_tokens)"))
    return None


def budgets(credits: Mapping[str, Decimal], state: State) -> list[Budget]:
    """Every budget the limiter keeps (tenants with credit, sessions with a budget)."""
    out = []
    for key, _ in state.items("b:"):
        account = BudgetAccount.load(state, key.removeprefix("b:"))
        assert account is not None
        scope = Scope.parse(account.scope)
        budget = credits.get(scope.tenant) if scope.kind == "tenant" else account.budget
        if budget is not None:
            out.append(Budget(account.scope, budget, account.charged, account.reserved))
    return out


# -- what the ledger says -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    """A hold that ended: what its budgets and its session get back (the queue may move)."""

    fact: BudgetSettled
    reserved: dict[str, Decimal]
    session_usage: SessionUsage | None


def release(state: State, event: Event, hold: UnitHold, role: str = "budget-settled"
            ) -> Release:
    """The unit's hold ends (its costs are all counted)."""
    fact = BudgetSettled(**caused_by(event, role), source_event_id=event.event_id,
                         released_usd=hold.usd, released_tokens=hold.session_tokens,
                         unit_settled=True)
    usage = None
    if hold.session_tokens:
        usage = SessionUsage.load(state, event.tenant_id, event.execution_session_id)
        if usage is not None:
            usage = replace(usage, tokens_held=max(0, usage.tokens_held - hold.session_tokens))
    return Release(fact, {s: -hold.usd for s in hold.budgets}, usage)


def charge(limits: ScopeLimits, credits: Mapping[str, Decimal], state: State,
           event: LedgerLineItem | LedgerUnitSettled
           ) -> tuple[list[BudgetSettled], Release | None]:
    """What the ledger billed counts against the budgets (and corrects the token windows);
    its settlement of the unit ends the hold, unless the unit's call's tokens are still to
    be billed (two topics): then the hold ends when they are."""
    wu = event.work_unit_id or ""
    hold = UnitHold.load(state, wu)
    now = event.occurred_at
    if isinstance(event, LedgerUnitSettled):
        if hold is None:
            return [], None
        if event.outcome == "accepted" and hold.call == "awaited":
            # its call's tokens are on another topic and not billed yet: the hold stays
            # until they are, or a grant could spend them twice
            return [BudgetSettled(**caused_by(event, "budget-settled"),
                                  source_event_id=event.event_id, awaiting_llm=True)], None
        return [], release(state, event, hold)
    charged = event.total_usd if event.billed else ZERO
    if charged and event.tenant_id not in credits and BudgetAccount.load(
            state, str(Scope.of_session(event.tenant_id, event.execution_session_id))) is None:
        charged = ZERO  # no budget of its tenant's or session's keeps an account here
    llm = event.line_item_type == "llm_tokens"
    used = 0
    levels: dict[str, float] = {}
    if llm and hold is not None and hold.rated:
        used = weighted_tokens(event.llm_tokens_in, event.llm_tokens_out,
                               event.llm_input_price_usd_per_1k,
                               event.llm_output_price_usd_per_1k)
        refund = hold.rate_tokens  # the estimate comes back once; every real use is taken
        for scope in hold.rated:
            per_minute = limits.tpm_of(scope)
            if per_minute is None:
                continue
            window = f"tpm:{scope}"
            level = rate_window_level(state, window, per_minute, now)
            levels[window] = round(min(float(per_minute), level + refund) - used, 6)
    session_tokens = 0
    if llm and event.billed:
        usage = SessionUsage.load(state, event.tenant_id, event.execution_session_id)
        if usage is not None and usage.limits.max_tokens is not None:
            session_tokens = event.llm_tokens_in + event.llm_tokens_out
    # Only billed tokens are the accepted attempt's (or a cancelled one's): a fenced
    # attempt's are leakage, and the hold must not end on them.
    billed_llm = llm and event.billed
    waits_for_it = billed_llm and hold is not None and hold.call != "none"
    if not charged and not levels and not session_tokens and not waits_for_it:
        return [], None
    fact = BudgetSettled(**caused_by(event, "budget-charged"),
                         source_event_id=event.event_id, charged_usd=charged,
                         tokens_used=used, rate_levels=levels,
                         session_tokens=session_tokens, llm_billed=billed_llm)
    if waits_for_it and hold is not None and hold.status == "settled":
        # the late tokens of a unit that settled first: counted, then its hold ends
        return [fact], release(state, event, hold, role="budget-settled-late")
    return [fact], None


# -- evolve -------------------------------------------------------------------------------


def evolve_held(state: State, work_unit_id: str, held_usd: Decimal, budget_scopes: list[str],
                session_budget: Decimal | None) -> None:
    """A grant's first hold of the unit: reserved against each of its budgets."""
    for scope in budget_scopes:
        account = BudgetAccount.load_or_new(state, scope)
        budget = account.budget
        if Scope.parse(scope).kind == "session" and budget is None:
            budget = session_budget
        replace(account, budget=budget, reserved=account.reserved + held_usd).save(state)


def evolve_settled(state: State, fact: BudgetSettled) -> None:
    """What the ledger charged, counted; what a settled unit held, given back."""
    wu = fact.work_unit_id or ""
    if fact.session_tokens or fact.released_tokens:
        usage = SessionUsage.load(state, fact.tenant_id, fact.execution_session_id)
        if usage is not None:
            replace(usage, tokens=usage.tokens + fact.session_tokens,
                    tokens_held=max(0, usage.tokens_held - fact.released_tokens)).save(state)
    if fact.charged_usd:
        tenant_scope = str(Scope.of_tenant(fact.tenant_id))
        session_scope = str(Scope.of_session(fact.tenant_id, fact.execution_session_id))
        for scope in (tenant_scope, session_scope):
            account = BudgetAccount.load(state, scope)
            if account is None and scope == session_scope:
                continue  # a session without a budget keeps no account here
            account = account or BudgetAccount(scope)
            replace(account, charged=account.charged + fact.charged_usd).save(state)
    hold = UnitHold.load(state, wu)
    if hold is None:
        return
    if not fact.unit_settled:
        changed = hold
        if fact.rate_levels:
            changed = replace(changed, rate_tokens=0)  # the estimate came back
        if fact.llm_billed and hold.call != "none":
            changed = replace(changed, call="billed")
        if fact.awaiting_llm:
            changed = replace(changed, status="settled")  # ends when its tokens are billed
        if changed != hold:
            changed.save(state, wu)
        return
    if fact.released_usd:
        for scope in hold.budgets:
            account = BudgetAccount.load_or_new(state, scope)
            replace(account, reserved=account.reserved - fact.released_usd).save(state)
    state.delete(UnitHold.key(wu))
