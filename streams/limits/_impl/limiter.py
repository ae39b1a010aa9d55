"""The limiter: concurrency slots, rate windows and budget holds per scope, on one partition.

Limits span every scheduler partition (a tenant's or a provider's units live in
all of them), so their counts have a single writer: this reducer, over the
one-partition `limits` topic where schedulers ask for slots and give them back
and where the ledger tells what it billed. A request is granted at once in
every one of its scopes, or waits in the queue, or (a budget its charges have
already spent) is denied:

- *concurrency*: a slot in each limited scope, given back when the attempt ends;
- *rate*: requests and tokens per minute, token buckets in logged time (a
  minute's worth deep). A request that finds a bucket short is granted with a
  `not_before` (the time the bucket will have refilled for it) and the bucket
  goes into debt, so the next request's turn comes after it: requests are
  spaced, never retried in a storm. Tokens are estimated at grant time and
  corrected by the real usage the ledger reports;
- *budget*: the unit's maximum cost is held against its tenant's prepaid
  credit and its session's budget until the ledger settles the unit; a unit
  that fits only once other holds settle waits in the queue.

Its facts (`flow`) are its changelog and carry what they change (rate levels
after the take), so a replay counts the same whatever the configuration.

State: `s:<scope>` the slots in use; `h:<unit>` what a unit holds; `r:<unit>`
its budget hold and token estimate (until the ledger settles it);
`b:<budget scope>` a budget's charged and reserved amounts; `rb:<window>` a
rate window's level and time; `q:<priority>:<finish tag>:<seq>` a waiting
request (read in that order: priority, then weighted fair queuing by tenant,
then arrival) and `w:<unit>` its key; `seq` the next arrival number; `vt` the
virtual time and `vf:<tenant>` each tenant's last finish tag; `waiting` how
many wait (a release with nobody waiting scans nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

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
    SessionLimitCrossed,
    SessionLimitName,
    SessionLimits,
    SessionLimitsChanged,
    SessionLimitsSet,
    SlotDenied,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotRequested,
    StateRetired,
    quantize_money,
    weighted_tokens,
)
from onceflow.streams.ids import caused_by, derive_event_id, restated
from onceflow.streams.limits._impl.retries import RetryBudget
from onceflow.streams.limits._impl.scopes import ScopeLimits
from onceflow.streams.limits._impl.sessions import LIMITS_ACTOR, LimitCrossing, SessionUsage
from onceflow.streams.state.generations import retention_step_ms
from onceflow.streams.topics.catalog import Topic
from onceflow.streams.types import Reducer, Routed, State

if TYPE_CHECKING:
    from onceflow.streams.settings import OnceflowSettings

__all__ = ["Budget", "Limiter", "rate_window_level"]


#: the queue is read by priority first
_RANK: dict[str, int] = {"critical": 0, "p0": 1, "p1": 2, "p2": 3}
_ZERO = Decimal("0")
_MINUTE_MS = 60_000
#: how many sessions one fact forgets at most
_RETIRE_PER_FACT = 1000
#: the step of logged time the limiter last looked for idle sessions in
_RETIRED_STEP = "retired-step"


def _idle_key(at: int, scope: str) -> str:
    # sessions' accounts by when they last changed, oldest first
    return f"i:{at:013d}:{scope}"


def _in_use(state: State, scope: str) -> int:
    n: int = state.get(f"s:{scope}", 0)
    return n


def _usd(value: Decimal) -> str:
    return f"{quantize_money(value):f}"


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's credit or a session's budget, with what is charged and held against it."""

    scope: str
    budget: Decimal
    charged: Decimal = _ZERO
    reserved: Decimal = _ZERO

    @property
    def available(self) -> Decimal:
        return self.budget - self.charged - self.reserved

    @staticmethod
    def stored(state: State, scope: str) -> dict[str, str]:
        d: dict[str, str] = state.get(f"b:{scope}") or {}
        return d

    def as_json(self) -> dict[str, str]:
        return {"scope": self.scope, "budget_usd": _usd(self.budget),
                "charged_usd": _usd(self.charged), "reserved_usd": _usd(self.reserved),
                "available_usd": _usd(self.available)}


def rate_window_level(state: State, window: str, per_minute: int, now: int) -> float:
    """What a rate window holds at `now`: its last level refilled at `per_minute` a minute of
    logged time since, at most a minute's worth (negative while it is owed)."""
    d = state.get(f"rb:{window}")
    if d is None:
        return float(per_minute)
    elapsed = max(0, now - d["at"])
    return min(float(per_minute), d["level"] + elapsed * per_minute / _MINUTE_MS)


@dataclass
class _Tentative:
    """What a queue scan has granted so far in this decision, before any of it is folded."""

    slots: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, Decimal] = field(default_factory=dict)
    levels: dict[str, float] = field(default_factory=dict)
    #: sessions' usage after this decision's grants, and the sessions it found at a limit
    usage: dict[str, SessionUsage] = field(default_factory=dict)
    reached: set[str] = field(default_factory=set)


class Limiter(Reducer):
    name = "limiter"
    accepts = frozenset({"flow.slot.requested", "flow.slot.released", "ledger.line_item",
                         "ledger.unit.settled", "flow.session.limits.set",
                         "flow.retry.requested"})

    def __init__(self, limits: ScopeLimits, reports: Topic, queue_scan: int = 256,
                 credits: Mapping[str, Decimal] | None = None, *, horizon_ms: int = 0,
                 retries: RetryBudget | None = None) -> None:
        self.limits = limits
        #: each tenant's retry budget (Krako 2.0's numbers unless configured)
        self.retries = retries or RetryBudget()
        self.reports = reports
        self.queue_scan = queue_scan
        #: each prepaid tenant's credit: what its charges and holds may not exceed
        self.credits = dict(credits or {})
        #: a session's account is forgotten once idle this long (0: never): the session
        #: is over (`LimitsSettings.session_idle_ms`)
        self.horizon_ms = horizon_ms

    @classmethod
    def from_settings(cls, settings: OnceflowSettings) -> Limiter:
        """The limiter as a deployment configures it."""
        from onceflow.streams.topics.catalog import TopicCatalog

        return cls(ScopeLimits.from_settings(settings.limits), TopicCatalog(settings)["reports"],
                   settings.limits.queue_scan,
                   {t: Decimal(c) for t, c in settings.billing.prepaid_credits.items()},
                   horizon_ms=settings.limits.session_idle_ms,
                   retries=RetryBudget(settings.scheduler.retry_budget,
                                       settings.scheduler.retry_budget_per_minute))

    # -- the rules -------------------------------------------------------------------------

    def _budgets(self, state: State, tenant: str, session: str,
                 requested: str | None, t: _Tentative) -> list[Budget]:
        """The budgets a unit of this tenant and session is held against (`requested`: the
        session budget its submission named)."""
        out = []
        session_budget = None if requested is None else Decimal(requested)
        credit = self.credits.get(tenant)
        if credit is not None:
            out.append(self._budget(state, f"tenant:{tenant}", credit, t))
        scope = f"session:{tenant}/{session}"
        stored = Budget.stored(state, scope)
        if "budget" in stored:
            session_budget = Decimal(stored["budget"])  # the first submission's word stands
        if session_budget is not None:
            out.append(self._budget(state, scope, session_budget, t))
        return out

    @staticmethod
    def _budget(state: State, scope: str, budget: Decimal, t: _Tentative) -> Budget:
        d = Budget.stored(state, scope)
        return Budget(scope, budget, Decimal(d.get("charged", "0")),
                      Decimal(d.get("reserved", "0")) + t.reserved.get(scope, _ZERO))

    def _full(self, state: State, scopes: Sequence[str], t: _Tentative
              ) -> tuple[str, int, int] | None:
        """The first scope with no free slot, with its count and limit (None: all fit)."""
        for scope in scopes:
            limit = self.limits.limit_of(scope)
            if limit is None:
                continue
            used = t.slots.get(scope, _in_use(state, scope))
            if used >= limit:
                return scope, used, limit
        return None

    def _rate_take(self, state: State, scopes: Sequence[str], tokens: int, now: int,
                   t: _Tentative) -> tuple[int, dict[str, float]]:
        """When the request may run (its rate windows' turn) and each window's level after
        it takes its request and its tokens."""
        not_before = 0
        levels: dict[str, float] = {}
        for scope in scopes:
            for window, per_minute, cost in (("rpm", self.limits.rpm_of(scope), 1),
                                             ("tpm", self.limits.tpm_of(scope), tokens)):
                if per_minute is None or (window == "tpm" and cost == 0):
                    continue
                key = f"{window}:{scope}"
                level = t.levels.get(key)
                if level is None:
                    level = rate_window_level(state, key, per_minute, now)
                if level < cost:
                    # the time the window will have refilled what the request takes
                    wait = (cost - level) * _MINUTE_MS / per_minute
                    not_before = max(not_before, now + int(-(-wait // 1)))
                levels[key] = round(level - cost, 6)
        return not_before, levels

    def _blocked(self, state: State, req: Mapping[str, Any], t: _Tentative
                 ) -> tuple[str, int, int, str] | None:
        """Why a request cannot be granted now: (scope, in use, limit, detail); None: it can."""
        hold = Decimal(req["hold"])
        if state.get(f"r:{req['id']}") is None and (hold or req["budgeted"]):
            for b in self._budgets(state, req["tenant"], req["session"], req["session_budget"],
                                   t):
                if b.charged + b.reserved + hold > b.budget:
                    return (f"budget:{b.scope}", 0, 0,
                            f"{b.scope}: {_usd(hold)} USD to hold, {_usd(b.available)} USD "
                            f"available (budget {_usd(b.budget)}, charged {_usd(b.charged)}, "
                            f"held for running units {_usd(b.reserved)})")
        usage = self._usage(state, req, t)
        if usage is not None:
            wait = usage.tokens_wait(req, usage.tokens_held)
            if wait is not None:
                return f"budget:tokens:{usage.scope}", 0, 0, wait
        full = self._full(state, req["scopes"], t)
        if full is not None:
            scope, used, limit = full
            return scope, used, limit, f"{scope}: {used} of {limit} running"
        return None

    # -- sessions' execution limits ---------------------------------------------------------

    @staticmethod
    def _usage(state: State, req: Mapping[str, Any], t: _Tentative) -> SessionUsage | None:
        """What the request's session has used (None: the session has no limits)."""
        scope = f"{req['tenant']}/{req['session']}"
        usage = t.usage.get(scope)
        if usage is not None:
            return usage
        usage = SessionUsage.load(state, req["tenant"], req["session"])
        if usage is None and req["limits"] is not None:
            usage = SessionUsage(req["tenant"], req["session"],
                                 SessionLimits.model_validate(req["limits"]), started_at=-1)
        return usage

    def _session_cost(self, state: State, req: Mapping[str, Any], t: _Tentative,
                      hold: Decimal) -> tuple[Decimal, Decimal, Decimal] | None:
        """The session budget's (charged, reserved with `hold`, budget); None: it has none."""
        for b in self._budgets(state, req["tenant"], req["session"], req["session_budget"], t):
            if b.scope.startswith("session:"):
                return b.charged, b.reserved + hold, b.budget
        return None

    def _session_limit(self, state: State, req: Mapping[str, Any], now: int, t: _Tentative
                       ) -> tuple[SessionUsage, LimitCrossing] | None:
        """The limit granting `req` would take its session past (None: none, or no limits)."""
        usage = self._usage(state, req, t)
        if usage is None:
            return None
        if usage.reached:
            return usage, LimitCrossing(cast(SessionLimitName, usage.reached), "reached", "", "")
        if usage.started_at >= 0:
            crossing = usage.reached_by(req, now)
            if crossing is not None:
                return usage, crossing
        if state.get(f"r:{req['id']}") is None:
            cost = self._session_cost(state, req, t, _ZERO)
            hold = Decimal(req["hold"])
            if cost is not None and (cost[0] + hold > cost[2] or (not hold and cost[0] >= cost[2])):
                return usage, LimitCrossing(
                    "max_cost_usd", "reached", f"{_usd(cost[0])} charged",
                    f"{_usd(cost[2])} (this step may cost {_usd(hold)})")
        return None

    def _at_limit(self, state: State, cause: Event, req: Mapping[str, Any], usage: SessionUsage,
                  crossing: LimitCrossing, t: _Tentative) -> list[Event]:
        """The request is not granted: its session is at a limit (recorded once), parked or
        cancelled as its policy says."""
        facts: list[Event] = []
        policy = usage.limits.on_limit
        if not usage.reached and usage.scope not in t.reached:
            t.reached.add(usage.scope)
            facts.append(self._crossed(cause, req, usage, crossing))
            reason = f"session {usage.scope} {crossing.detail}"
        else:
            reason = f"session {usage.scope} is at its {crossing.limit} limit"
        then = ("parked: raise it (onceflow session limits) or cancel it" if policy == "park"
                else "cancelled")
        facts.append(SlotDenied(
            **self._envelope(cause, req, "denied"), attempt_index=req["attempt"],
            reason_code="SESSION_LIMIT", scope=f"session:{usage.scope}",
            reason=f"{reason}; {then}", on_limit=policy))
        return facts

    def _crossed(self, cause: Event, req: Mapping[str, Any], usage: SessionUsage,
                 crossing: LimitCrossing) -> SessionLimitCrossed:
        return SessionLimitCrossed(
            **caused_by(cause, f"limit:{usage.scope}:{crossing.limit}:{crossing.threshold}",
                        tenant_id=usage.tenant, execution_session_id=usage.session,
                        work_unit_id=req["id"]),
            limit=crossing.limit, threshold=crossing.threshold, used=crossing.used,
            maximum=crossing.maximum, on_limit=usage.limits.on_limit,
            detail=f"session {usage.scope} {crossing.detail}", steps=usage.steps,
            attempts=usage.attempts, llm_calls=usage.llm_calls)

    def _on_limits_set(self, state: State, event: SessionLimitsSet) -> Sequence[Event]:
        """An operator's new limits for a session; a parked session with room now goes on."""
        req = {"tenant": event.tenant_id, "session": event.execution_session_id,
               "session_budget": None, "limits": None}
        usage = SessionUsage.load(state, event.tenant_id, event.execution_session_id)
        resumed = False
        if usage is not None and usage.reached:
            raised = SessionUsage(usage.tenant, usage.session, event.session_limits,
                                  usage.started_at, usage.steps, usage.attempts,
                                  usage.llm_calls, usage.tokens, usage.tokens_held)
            cost = None
            budget = event.session_limits.max_cost_usd
            if budget is not None:
                spent = self._session_cost(state, req, _Tentative(), _ZERO)
                cost = (spent[0] if spent else _ZERO, budget)
            resumed = raised.room_left(event.occurred_at, cost)
        return (SessionLimitsChanged(
            **caused_by(event, "limits-changed"), session_limits=event.session_limits,
            requested_by=event.requested_by, reason=event.reason, resumed=resumed),)

    # -- reading the state (`onceflow limits`) --------------------------------------------

    def waiting_on(self, state: State) -> list[tuple[str, str]]:
        """Each waiting request's unit and the scope that holds it, in queue order."""
        out = []
        for _, waiting in state.items("q:"):
            blocked = self._blocked(state, waiting, _Tentative())
            out.append((waiting["id"], blocked[0] if blocked else ""))
        return out

    def budgets(self, state: State) -> list[Budget]:
        """Every budget the limiter keeps (tenants with credit, sessions with a budget)."""
        out = []
        for key, d in state.items("b:"):
            scope = key.removeprefix("b:")
            if scope.startswith("tenant:"):
                credit = self.credits.get(scope.removeprefix("tenant:"))
                if credit is None:
                    continue
                budget = credit
            elif "budget" in d:
                budget = Decimal(d["budget"])
            else:
                continue
            out.append(Budget(scope, budget, Decimal(d.get("charged", "0")),
                              Decimal(d.get("reserved", "0"))))
        return out

    def rate_windows(self, state: State, now: int) -> list[dict[str, Any]]:
        """Each rate window in use: its limit a minute and what it holds at `now`."""
        out = []
        for key, _ in state.items("rb:"):
            window = key.removeprefix("rb:")
            kind, scope = window.split(":", 1)
            per_minute = self.limits.rpm_of(scope) if kind == "rpm" else self.limits.tpm_of(scope)
            if per_minute is None:
                continue
            out.append({"window": window, "per_minute": per_minute,
                        "available": round(rate_window_level(state, window, per_minute, now), 1)})
        return out

    # -- decide ------------------------------------------------------------------------

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        facts = self._decide(state, event)
        if not self.horizon_ms:
            return facts
        # a session this decision moves is not idle (decide sees the state from before)
        moved = {f"{f.tenant_id}/{f.execution_session_id}" for f in (event, *facts)}
        retired = self._idle_sessions(state, event, moved)
        return facts if retired is None else [*facts, retired]

    def _decide(self, state: State, event: Event) -> Sequence[Event]:
        if isinstance(event, SlotRequested):
            return self._on_request(state, event)
        if isinstance(event, SlotReleased):
            return self._on_release(state, event)
        if isinstance(event, LedgerLineItem | LedgerUnitSettled):
            return self._on_ledger(state, event)
        if isinstance(event, SessionLimitsSet):
            return self._on_limits_set(state, event)
        if isinstance(event, RetryRequested):
            return (self.retries.decide(state, event),)
        return ()

    def _on_request(self, state: State, event: SlotRequested) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        held = state.get(f"h:{wu}")
        if held is not None:
            # asked again (a recovery re-sent it): the unit has its slots; say so again
            return (SlotGranted(**caused_by(event, "granted"), attempt_index=event.attempt_index,
                                scopes=held["scopes"]),)
        if state.get(f"w:{wu}") is not None:
            return ()  # already waiting
        req = _request(event, budgeted=event.tenant_id in self.credits)
        t = _Tentative()
        at_limit = self._session_limit(state, req, event.occurred_at, t)
        if at_limit is not None:
            return self._at_limit(state, event, req, *at_limit, t)
        denied = self._denied(state, event, req, t)
        if denied is not None:
            return (denied,)
        blocked = self._blocked(state, req, t)
        if blocked is None:
            return self._grant(state, event, req, event.occurred_at, t, waited_ms=0)
        scope, used, limit, detail = blocked
        # Start-time fair queuing: a tenant's requests follow one another in virtual time,
        # each as long as its cost over the tenant's weight; the queue is read by
        # priority, then by finish tag, so a tenant with many (or costly) units waits
        # behind its own backlog, not in front of everyone else.
        start = max(state.get("vt", 0.0), state.get(f"vf:{event.tenant_id}", 0.0))
        finish = start + event.cost / self.limits.weight_of(event.tenant_id)
        return (SlotQueued(**caused_by(event, "queued"), attempt_index=event.attempt_index,
                           scopes=event.scopes, scope=scope, in_use=used, limit=limit,
                           position=state.get("seq", 0), priority=event.priority,
                           fair_start=round(start, 9), fair_finish=round(finish, 9),
                           detail=detail, hold_usd=event.hold_usd,
                           session_budget_usd=event.session_budget_usd, tokens=event.tokens,
                           budgeted=req["budgeted"], kind=event.kind,
                           session_limits=event.session_limits,
                           session_tokens=event.session_tokens),)

    def _denied(self, state: State, cause: Event, req: Mapping[str, Any], t: _Tentative
                ) -> SlotDenied | None:
        """The denial of a request whose maximum cost its budget's charges leave no room for
        (None: it fits, now or once other holds settle)."""
        if state.get(f"r:{req['id']}") is not None:
            return None  # held already (a retry): it fitted
        hold = Decimal(req["hold"])
        for b in self._budgets(state, req["tenant"], req["session"], req["session_budget"], t):
            if b.charged + hold > b.budget or (not hold and b.charged >= b.budget):
                return SlotDenied(
                    **self._envelope(cause, req, "denied"), attempt_index=req["attempt"],
                    reason_code="BUDGET_EXCEEDED", scope=b.scope, budget_usd=b.budget,
                    charged_usd=b.charged, reserved_usd=b.reserved, hold_usd=hold,
                    reason=(f"{b.scope}: the unit may cost up to {_usd(hold)} USD and "
                            f"{_usd(b.budget - b.charged)} USD of its budget "
                            f"{_usd(b.budget)} USD is left (charged {_usd(b.charged)}); "
                            "raise the budget or submit smaller work (lower max_tokens)"))
        return None

    @staticmethod
    def _envelope(cause: Event, req: Mapping[str, Any], role: str) -> dict[str, Any]:
        """A fact about the requesting unit: the request's own, or one a release decided."""
        wu = req["id"]
        if cause.work_unit_id == wu:
            return caused_by(cause, role)
        return caused_by(cause, f"{role}:{wu}", tenant_id=req["tenant"],
                         execution_session_id=req["session"], work_unit_id=wu)

    def _grant(self, state: State, cause: Event, req: Mapping[str, Any], now: int,
               t: _Tentative, waited_ms: int) -> list[Event]:
        """Grant a request that fits, and note in `t` what it takes; with the warnings of
        its session's limits it brings to 80 %."""
        wu = req["id"]
        for s in req["scopes"]:
            t.slots[s] = t.slots.get(s, _in_use(state, s)) + 1
        held = _ZERO
        budget_scopes: list[str] = []
        if state.get(f"r:{wu}") is None:
            held = Decimal(req["hold"])
            for b in self._budgets(state, req["tenant"], req["session"], req["session_budget"],
                                   t):
                budget_scopes.append(b.scope)
                t.reserved[b.scope] = t.reserved.get(b.scope, _ZERO) + held
        not_before, levels = self._rate_take(state, req["scopes"], req["tokens"], now, t)
        t.levels.update(levels)
        warnings: list[Event] = []
        usage = self._usage(state, req, t) if req["limits"] is not None else None
        if usage is not None:
            started = usage if usage.started_at >= 0 else replace(usage, started_at=now)
            after = started.after_grant(req)
            cost = self._session_cost(state, req, t, _ZERO)
            for crossing in after.warnings(now, (cost[0] + cost[1], cost[2]) if cost else None):
                warnings.append(self._crossed(cause, req, after, crossing))
                after = replace(after, warned=(*after.warned, crossing.limit))
            t.usage[usage.scope] = after
        return [SlotGranted(
            **self._envelope(cause, req, "granted"), attempt_index=req["attempt"], scopes=req["scopes"],
            waited_ms=waited_ms, not_before=not_before if not_before > now else 0,
            held_usd=held, budget_scopes=budget_scopes,
            session_budget_usd=(Decimal(req["session_budget"])
                                if req["session_budget"] is not None else None),
            tokens=req["tokens"], rate_levels=levels, kind=req["kind"],
            session_limits=(SessionLimits.model_validate(req["limits"])
                            if req["limits"] is not None else None),
            session_tokens=req["stok"] if usage is not None else 0), *warnings]

    def _on_release(self, state: State, event: SlotReleased) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        held = state.get(f"h:{wu}")
        if held is None and state.get(f"w:{wu}") is None:
            return ()
        facts: list[Event] = [restated(event, "freed")]
        if held is None:
            return facts  # it gave up its place in the queue; no slot comes free
        t = _Tentative(slots={s: _in_use(state, s) - 1 for s in held["scopes"]})
        return [*facts, *self._scan(state, event, t, freed=held["scopes"])]

    def _on_ledger(self, state: State, event: LedgerLineItem | LedgerUnitSettled
                   ) -> Sequence[Event]:
        """What the ledger billed counts against the budgets; its settlement ends the hold."""
        wu = event.work_unit_id or ""
        hold = state.get(f"r:{wu}")
        now = event.occurred_at
        if isinstance(event, LedgerUnitSettled):
            if hold is None:
                return ()
            if event.outcome == "accepted" and hold.get("llm") and not hold.get("llm_seen"):
                # its call's tokens are on another topic and not billed yet: the hold stays
                # until they are, or a grant could spend them twice
                return (BudgetSettled(**caused_by(event, "budget-settled"),
                                      source_event_id=event.event_id, awaiting_llm=True),)
            return self._release(state, event, hold)
        charged = event.total_usd if event.billed else _ZERO
        if charged and event.tenant_id not in self.credits and not Budget.stored(
                state, f"session:{event.tenant_id}/{event.execution_session_id}"):
            charged = _ZERO  # no budget of its tenant's or session's keeps an account here
        llm = event.line_item_type == "llm_tokens"
        used = 0
        levels: dict[str, float] = {}
        if llm and hold is not None and hold["rated"]:
            used = weighted_tokens(event.llm_tokens_in, event.llm_tokens_out,
                                   event.llm_input_price_usd_per_1k,
                                   event.llm_output_price_usd_per_1k)
            refund = hold["tok"]  # the estimate comes back once; every real use is taken
            for scope in hold["rated"]:
                per_minute = self.limits.tpm_of(scope)
                if per_minute is None:
                    continue
                key = f"tpm:{scope}"
                level = rate_window_level(state, key, per_minute, now)
                levels[key] = round(min(float(per_minute), level + refund) - used, 6)
        session_tokens = 0
        if llm and event.billed:
            usage = SessionUsage.load(state, event.tenant_id, event.execution_session_id)
            if usage is not None and usage.limits.max_tokens is not None:
                session_tokens = event.llm_tokens_in + event.llm_tokens_out
        # Only billed tokens are the accepted attempt's (or a cancelled one's): a fenced
        # attempt's are leakage, and the hold must not end on them.
        billed_llm = llm and event.billed
        waits_for_it = billed_llm and hold is not None and bool(hold.get("llm"))
        if not charged and not levels and not session_tokens and not waits_for_it:
            return ()
        fact = BudgetSettled(**caused_by(event, "budget-charged"),
                             source_event_id=event.event_id, charged_usd=charged,
                             tokens_used=used, rate_levels=levels,
                             session_tokens=session_tokens, llm_billed=billed_llm)
        if waits_for_it and hold is not None and hold.get("settled"):
            # the late tokens of a unit that settled first: counted, then its hold ends
            return [fact, *self._release(state, event, hold, role="budget-settled-late")]
        return (fact,)

    def _release(self, state: State, event: Event, hold: Mapping[str, Any],
                 role: str = "budget-settled") -> list[Event]:
        """The unit's hold ends (its costs are all counted): whatever waits may now fit."""
        released = Decimal(hold["hold"])
        released_tokens = hold.get("stok", 0)
        fact = BudgetSettled(**caused_by(event, role), source_event_id=event.event_id,
                             released_usd=released, released_tokens=released_tokens,
                             unit_settled=True)
        t = _Tentative(reserved={s: -released for s in hold["budgets"]})
        if released_tokens:
            usage = SessionUsage.load(state, event.tenant_id, event.execution_session_id)
            if usage is not None:
                t.usage[usage.scope] = replace(
                    usage, tokens_held=max(0, usage.tokens_held - released_tokens))
        return [fact, *self._scan(state, event, t)] if released or released_tokens else [fact]

    def _scan(self, state: State, cause: Event, t: _Tentative, freed: Sequence[str] = ()
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
        for looked, (_, waiting) in enumerate(state.items("q:")):
            if looked >= self.queue_scan:
                break
            limit = self._session_limit(state, waiting, now, t)
            if limit is not None:
                decided.extend(self._at_limit(state, cause, waiting, *limit, t))
                continue
            blocked = self._blocked(state, waiting, t)
            if blocked is None:
                decided.extend(self._grant(state, cause, waiting, now, t,
                                           waited_ms=max(0, now - waiting["at"])))
                if limited and all(self._full(state, [s], t) for s in limited):
                    break
            elif blocked[0].startswith("budget:"):
                # charges since it queued may have left its budget too little for good
                denied = self._denied(state, cause, waiting, t)
                if denied is not None:
                    decided.append(denied)
        return decided

    # -- evolve ------------------------------------------------------------------------

    # -- bounded state: sessions' accounts -------------------------------------------------

    def _idle_sessions(self, state: State, event: Event, moved: set[str]
                       ) -> StateRetired | None:
        """Once per step of logged time (a sixteenth of the horizon), the sessions whose
        account has not changed for a horizon and holds nothing: forgotten by a fact (a
        step later on, a session that comes back starts a new account)."""
        step_ms = retention_step_ms(self.horizon_ms)
        now = event.occurred_at
        if now // step_ms <= state.get(_RETIRED_STEP, 0) or now <= self.horizon_ms:
            return None
        idle = []
        for key, _ in state.items("i:", stop=_idle_key(now - self.horizon_ms + 1, "")):
            scope = key.split(":", 2)[2]
            if scope in moved:
                continue
            tenant, session = scope.split("/", 1)
            usage = SessionUsage.load(state, tenant, session)
            budget = Budget.stored(state, f"session:{scope}")
            if (usage is None or not usage.tokens_held) and \
                    Decimal(budget.get("reserved", "0")) == _ZERO:
                idle.append(scope)
            if len(idle) >= _RETIRE_PER_FACT:
                break
        return StateRetired(**caused_by(event, "state-retired"), processor=self.name,
                            horizon_ms=self.horizon_ms, inputs_until=0, work_unit_ids=[],
                            sessions=idle)

    def _touch(self, state: State, fact: Event) -> None:
        """A session's account changed: it is idle from now on."""
        scope = f"{fact.tenant_id}/{fact.execution_session_id}"
        if not fact.execution_session_id or (
                f"x:{scope}" not in state and f"b:session:{scope}" not in state):
            return
        before = state.get(f"il:{scope}")
        if before is not None and before >= fact.occurred_at:
            return
        if before is not None:
            state.delete(_idle_key(before, scope))
        state.set(_idle_key(fact.occurred_at, scope), 1)
        state.set(f"il:{scope}", fact.occurred_at)

    @staticmethod
    def _evolve_retired(state: State, fact: StateRetired) -> None:
        for scope in fact.sessions:
            at = state.get(f"il:{scope}")
            if at is not None:
                state.delete(_idle_key(at, scope))
            for key in (f"il:{scope}", f"x:{scope}", f"b:session:{scope}"):
                state.delete(key)
        step_ms = retention_step_ms(fact.horizon_ms)
        if len(fact.sessions) < _RETIRE_PER_FACT:
            state.set(_RETIRED_STEP, fact.occurred_at // step_ms)

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, StateRetired):
            self._evolve_retired(state, fact)
            return
        self._evolve(state, fact)
        if self.horizon_ms:
            self._touch(state, fact)

    def _evolve(self, state: State, fact: Event) -> None:
        wu = fact.work_unit_id or ""
        if isinstance(fact, SlotGranted):
            self._evolve_granted(state, wu, fact)
        elif isinstance(fact, SlotQueued):
            seq: int = state.get("seq", 0)
            key = (f"q:{_RANK[fact.priority]}:{fact.fair_finish:024.9f}:{seq:012d}")
            state.set(key, {**_queued(fact), "at": fact.occurred_at,
                            "start": fact.fair_start})
            state.set(f"w:{wu}", key)
            state.set(f"vf:{fact.tenant_id}", fact.fair_finish)
            state.set("seq", seq + 1)
            state.set("waiting", state.get("waiting", 0) + 1)
        elif isinstance(fact, SlotReleased):
            held = state.get(f"h:{wu}")
            if held is not None:
                for s in held["scopes"]:
                    left = _in_use(state, s) - 1
                    if left > 0:
                        state.set(f"s:{s}", left)
                    else:
                        state.delete(f"s:{s}")
                state.delete(f"h:{wu}")
            self._unqueue(state, wu)
        elif isinstance(fact, BudgetSettled):
            self._evolve_settled(state, wu, fact)
        elif isinstance(fact, SlotDenied):
            self._unqueue(state, wu)
        elif isinstance(fact, SessionLimitCrossed):
            usage = SessionUsage.load(state, fact.tenant_id, fact.execution_session_id)
            if usage is not None and fact.threshold == "warning":
                replace(usage, warned=(*usage.warned, fact.limit)).save(state)
            elif usage is not None:
                replace(usage, reached=fact.limit).save(state)
        elif isinstance(fact, SessionLimitsChanged):
            self._evolve_limits_changed(state, fact)
        elif isinstance(fact, RetryGranted):
            self.retries.evolve(state, fact)

    @staticmethod
    def _evolve_limits_changed(state: State, fact: SessionLimitsChanged) -> None:
        tenant, session = fact.tenant_id, fact.execution_session_id
        usage = SessionUsage.load(state, tenant, session) or SessionUsage(
            tenant, session, fact.session_limits, started_at=-1)
        # the warnings start over: each is recorded again at 80 % of the new limit
        replace(usage, limits=fact.session_limits, warned=(),
                reached="" if fact.resumed else usage.reached).save(state)
        budget = fact.session_limits.max_cost_usd
        if budget is not None:
            scope = f"session:{tenant}/{session}"
            state.set(f"b:{scope}", {**Budget.stored(state, scope), "budget": _usd(budget)})

    def _evolve_granted(self, state: State, wu: str, fact: SlotGranted) -> None:
        if state.get(f"h:{wu}") is None:
            for s in fact.scopes:
                state.set(f"s:{s}", _in_use(state, s) + 1)
        if fact.session_limits is not None:
            usage = SessionUsage.load(state, fact.tenant_id, fact.execution_session_id) or \
                SessionUsage(fact.tenant_id, fact.execution_session_id, fact.session_limits,
                             started_at=-1)
            if usage.started_at < 0:
                usage = replace(usage, started_at=fact.occurred_at)
            usage.after_grant({"attempt": fact.attempt_index, "kind": fact.kind,
                               "stok": fact.session_tokens}).save(state)
        state.set(f"h:{wu}", {"scopes": fact.scopes, "attempt": fact.attempt_index})
        waiting = self._unqueue(state, wu)
        if waiting is not None:
            state.set("vt", max(state.get("vt", 0.0), waiting["start"]))
        for window, level in sorted(fact.rate_levels.items()):
            prev = state.get(f"rb:{window}")
            at = fact.occurred_at if prev is None else max(prev["at"], fact.occurred_at)
            state.set(f"rb:{window}", {"level": level, "at": at})
        rated = sorted({w.split(":", 1)[1] for w in fact.rate_levels if w.startswith("tpm:")})
        hold = state.get(f"r:{wu}")
        if hold is None and not (fact.budget_scopes or rated or fact.session_tokens):
            return
        if hold is None:
            hold = {"budgets": fact.budget_scopes, "hold": _usd(fact.held_usd), "tok": 0,
                    "rated": [], "stok": 0, "llm": fact.kind == "llm_pod"}
            for scope in fact.budget_scopes:
                b = dict(Budget.stored(state, scope))
                b["reserved"] = _usd(Decimal(b.get("reserved", "0")) + fact.held_usd)
                if scope.startswith("session:") and "budget" not in b and (
                        fact.session_budget_usd is not None):
                    b["budget"] = _usd(fact.session_budget_usd)
                state.set(f"b:{scope}", b)
        hold = {**hold, "tok": hold["tok"] + (fact.tokens if rated else 0),
                "rated": sorted(set(hold["rated"]) | set(rated)),
                "stok": hold.get("stok", 0) + fact.session_tokens}
        state.set(f"r:{wu}", hold)

    @staticmethod
    def _evolve_settled(state: State, wu: str, fact: BudgetSettled) -> None:
        hold = state.get(f"r:{wu}")
        if fact.session_tokens or fact.released_tokens:
            usage = SessionUsage.load(state, fact.tenant_id, fact.execution_session_id)
            if usage is not None:
                replace(usage, tokens=usage.tokens + fact.session_tokens,
                        tokens_held=max(0, usage.tokens_held - fact.released_tokens)
                        ).save(state)
        if fact.charged_usd:
            tenant_scope = f"tenant:{fact.tenant_id}"
            session_scope = f"session:{fact.tenant_id}/{fact.execution_session_id}"
            for scope in (tenant_scope, session_scope):
                b = Budget.stored(state, scope)
                if scope == session_scope and not b:
                    continue  # a session without a budget keeps no account here
                state.set(f"b:{scope}", {**b, "charged": _usd(
                    Decimal(b.get("charged", "0")) + fact.charged_usd)})
        for window, level in sorted(fact.rate_levels.items()):
            prev = state.get(f"rb:{window}")
            at = fact.occurred_at if prev is None else max(prev["at"], fact.occurred_at)
            state.set(f"rb:{window}", {"level": level, "at": at})
        if hold is None:
            return
        if not fact.unit_settled:
            changed = dict(hold)
            if fact.rate_levels:
                changed["tok"] = 0  # the estimate came back
            if fact.llm_billed:
                changed["llm_seen"] = True
            if fact.awaiting_llm:
                changed["settled"] = True  # ends when its call's tokens are billed
            if changed != hold:
                state.set(f"r:{wu}", changed)
            return
        if fact.released_usd:
            for scope in hold["budgets"]:
                b = Budget.stored(state, scope)
                state.set(f"b:{scope}", {**b, "reserved": _usd(
                    Decimal(b.get("reserved", "0")) - fact.released_usd)})
        state.delete(f"r:{wu}")

    @staticmethod
    def _unqueue(state: State, wu: str) -> dict[str, Any] | None:
        """Take a unit's request out of the queue; returns it (None: it was not waiting)."""
        key = state.get(f"w:{wu}")
        if key is None:
            return None
        waiting: dict[str, Any] = state.get(key)
        state.delete(key)
        state.delete(f"w:{wu}")
        left = state.get("waiting", 0) - 1
        if left > 0:
            state.set("waiting", left)
        else:
            state.delete("waiting")
        return waiting

    # -- route -------------------------------------------------------------------------

    def route(self, fact: Event) -> Sequence[Routed]:
        """Grants, denials and queue places, to the unit's scheduler partition."""
        if isinstance(fact, SlotGranted | SlotQueued | SlotDenied | RetryGranted | RetryDenied):
            wu = fact.work_unit_id or ""
            return (Routed(self.reports.name, fact, self.reports.partition_of(wu)),)
        if isinstance(fact, SessionLimitCrossed) and fact.threshold == "reached":
            return self._control(fact, "pause" if fact.on_limit == "park" else "cancel",
                                 LIMITS_ACTOR, fact.detail)
        if isinstance(fact, SessionLimitsChanged) and fact.resumed:
            # the limits actor resumes what it parked; the operator who raised them is named
            return self._control(fact, "resume", LIMITS_ACTOR,
                                 f"limits raised by {fact.requested_by}"
                                 + (f": {fact.reason}" if fact.reason else ""))
        return ()

    def _control(self, fact: Event, action: ControlAction, actor: str, reason: str
                 ) -> Sequence[Routed]:
        """A session's pause, cancel or resume, to the schedulers (one records it and sends it
        on to every partition)."""
        session = fact.execution_session_id
        control = ControlRequested(
            event_id=derive_event_id(fact.event_id, f"control:{action}"),
            occurred_at=fact.occurred_at, tenant_id=fact.tenant_id,
            execution_session_id=session, causation_id=fact.event_id,
            action=action, scope="session", requested_by=actor, reason=reason)
        return (Routed(self.reports.name, control, self.reports.partition_of(session)),)


def _request(event: SlotRequested, *, budgeted: bool) -> dict[str, Any]:
    """A request as the rules read it (and as it waits in the queue)."""
    return {"id": event.work_unit_id or "", "tenant": event.tenant_id,
            "session": event.execution_session_id, "attempt": event.attempt_index,
            "scopes": event.scopes, "hold": _usd(event.hold_usd), "budgeted": budgeted,
            "session_budget": (_usd(event.session_budget_usd)
                               if event.session_budget_usd is not None else None),
            "tokens": event.tokens, "kind": event.kind, "stok": event.session_tokens,
            "limits": (event.session_limits.model_dump(mode="json", exclude_defaults=True)
                       if event.session_limits is not None else None)}


def _queued(fact: SlotQueued) -> dict[str, Any]:
    """A waiting request, as the queue keeps it."""
    return {"id": fact.work_unit_id or "", "tenant": fact.tenant_id,
            "session": fact.execution_session_id, "attempt": fact.attempt_index,
            "scopes": fact.scopes, "hold": _usd(fact.hold_usd), "budgeted": fact.budgeted,
            "session_budget": (_usd(fact.session_budget_usd)
                               if fact.session_budget_usd is not None else None),
            "tokens": fact.tokens, "kind": fact.kind, "stok": fact.session_tokens,
            "limits": (fact.session_limits.model_dump(mode="json", exclude_defaults=True)
                       if fact.session_limits is not None else None)}
