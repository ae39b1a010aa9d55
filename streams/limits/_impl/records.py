"""The limiter's state, typed: each key and the record it holds, converted here only.

State stores JSON (canonical, so a replay compares byte for byte); the rules
work with these records, read and written at the state boundary by their
`load` / `save`. The keys, in one place:

- `s:<scope>` how many slots of a limited scope are in use;
- `h:<unit>` `SlotsHeld`: the scopes a unit holds a slot in;
- `r:<unit>` `UnitHold`: what is held for a unit until the ledger settles it;
- `b:<budget scope>` `BudgetAccount`: a tenant's credit or a session's budget;
- `rb:<rpm|tpm>:<scope>` and `rt:<tenant>` `RateWindow`: a token bucket in logged
  time (a scope's request and token rates, a tenant's retry budget);
- `q:<rank>:<finish tag>:<seq>` `QueuedRequest`, read in that order (priority,
  then weighted fair queuing by tenant, then arrival), and `w:<unit>` its key;
  `seq` the next arrival number, `vt` the virtual time, `vf:<tenant>` each
  tenant's last finish tag, `waiting` how many wait;
- `x:<tenant>/<session>` a session's `SessionUsage` (`sessions`), and
  `i:<at>:<tenant>/<session>`, `il:<tenant>/<session>`, `retired-step` the index
  retention reads (`retention`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from onceflow.schemas import (
    Scope,
    SessionLimits,
    SlotQueued,
    SlotRequested,
    WorkKind,
    quantize_money,
)
from onceflow.streams.types import State

__all__ = [
    "QUEUE_PREFIX",
    "ZERO",
    "BudgetAccount",
    "CallStatus",
    "HoldStatus",
    "QueuedRequest",
    "RateWindow",
    "SlotRequest",
    "SlotsHeld",
    "Tentative",
    "UnitHold",
    "in_use",
    "queue_key",
    "set_in_use",
    "usd",
]

ZERO = Decimal("0")
#: the queue is read by priority first
_RANK: dict[str, int] = {"critical": 0, "p0": 1, "p1": 2, "p2": 3}
QUEUE_PREFIX = "q:"


def usd(value: Decimal) -> str:
    """An amount as state and messages write it: 6 places, half-even."""
    return f"{quantize_money(value):f}"


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else usd(value)


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


# -- slots --------------------------------------------------------------------------------


def in_use(state: State, scope: str) -> int:
    """How many slots of `scope` are in use."""
    n: int = state.get(f"s:{scope}", 0)
    return n


def set_in_use(state: State, scope: str, n: int) -> None:
    if n > 0:
        state.set(f"s:{scope}", n)
    else:
        state.delete(f"s:{scope}")


@dataclass(frozen=True, slots=True)
class SlotsHeld:
    """The scopes a unit holds a slot in, for which attempt."""

    scopes: tuple[str, ...]
    attempt: int

    @staticmethod
    def key(work_unit_id: str) -> str:
        return f"h:{work_unit_id}"

    @classmethod
    def load(cls, state: State, work_unit_id: str) -> SlotsHeld | None:
        d = state.get(cls.key(work_unit_id))
        return None if d is None else cls(tuple(d["scopes"]), d["attempt"])

    def save(self, state: State, work_unit_id: str) -> None:
        state.set(self.key(work_unit_id), {"scopes": list(self.scopes), "attempt": self.attempt})


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """A unit's request for its slots, as the rules read it (and as it waits in the queue)."""

    work_unit_id: str
    tenant: str
    session: str
    attempt: int
    scopes: tuple[str, ...]
    #: its maximum cost, held against its budgets
    hold: Decimal
    #: its tenant has prepaid credit
    budgeted: bool
    #: the session budget its submission named (None: none)
    session_budget: Decimal | None
    #: estimated tokens for token rate windows
    tokens: int
    kind: WorkKind
    #: the most tokens it may use, held against its session's max_tokens
    session_tokens: int
    #: its session's execution limits, as its submission set them (None: none)
    limits: SessionLimits | None

    @property
    def session_scope(self) -> Scope:
        return Scope.of_session(self.tenant, self.session)

    @classmethod
    def of(cls, event: SlotRequested | SlotQueued, *, budgeted: bool) -> SlotRequest:
        return cls(event.work_unit_id or "", event.tenant_id, event.execution_session_id,
                   event.attempt_index, tuple(event.scopes), quantize_money(event.hold_usd),
                   budgeted, _decimal(_amount(event.session_budget_usd)), event.tokens,
                   event.kind,
                   event.session_tokens, event.session_limits)

    def to_state(self) -> dict[str, Any]:
        return {"id": self.work_unit_id, "tenant": self.tenant, "session": self.session,
                "attempt": self.attempt, "scopes": list(self.scopes), "hold": usd(self.hold),
                "budgeted": self.budgeted, "session_budget": _amount(self.session_budget),
                "tokens": self.tokens, "kind": self.kind, "stok": self.session_tokens,
                "limits": (self.limits.model_dump(mode="json", exclude_defaults=True)
                           if self.limits is not None else None)}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> SlotRequest:
        return cls(d["id"], d["tenant"], d["session"], d["attempt"], tuple(d["scopes"]),
                   Decimal(d["hold"]), d["budgeted"], _decimal(d["session_budget"]),
                   d["tokens"], d["kind"], d["stok"],
                   None if d["limits"] is None else SessionLimits.model_validate(d["limits"]))


def queue_key(priority: str, finish: float, seq: int) -> str:
    return f"{QUEUE_PREFIX}{_RANK[priority]}:{finish:024.9f}:{seq:012d}"


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request that waits: since when, and its start tag in fair queuing."""

    request: SlotRequest
    at: int
    start: float

    def to_state(self) -> dict[str, Any]:
        return {**self.request.to_state(), "at": self.at, "start": self.start}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> QueuedRequest:
        return cls(SlotRequest.from_state(d), d["at"], d["start"])


# -- holds and budgets --------------------------------------------------------------------

#: a unit's LLM call as its hold knows it: it makes none, its tokens are awaited from the
#: ledger, or they were billed
CallStatus = Literal["none", "awaited", "billed"]
#: a hold runs with its unit, or its unit settled and the hold waits for the call's tokens
HoldStatus = Literal["running", "settled"]


@dataclass(frozen=True, slots=True)
class UnitHold:
    """What is held for a unit until the ledger has billed everything it cost."""

    #: the budgets its maximum cost is held against (tenant:<t>, session:<t>/<s>)
    budgets: tuple[str, ...]
    usd: Decimal
    #: tokens estimated and taken from token windows, given back once the real use is billed
    rate_tokens: int
    #: the token-rated scopes it took from
    rated: tuple[str, ...]
    #: tokens held against its session's max_tokens
    session_tokens: int
    call: CallStatus = "none"
    status: HoldStatus = "running"

    @staticmethod
    def key(work_unit_id: str) -> str:
        return f"r:{work_unit_id}"

    @classmethod
    def held(cls, state: State, work_unit_id: str) -> bool:
        """Whether something is held for the unit (a retry of it fitted already); no record
        is built, as every request asks this several times."""
        return cls.key(work_unit_id) in state

    @classmethod
    def load(cls, state: State, work_unit_id: str) -> UnitHold | None:
        d = state.get(cls.key(work_unit_id))
        if d is None:
            return None
        return cls(tuple(d["budgets"]), Decimal(d["usd"]), d["tok"], tuple(d["rated"]),
                   d["stok"], d["call"], d["status"])

    def save(self, state: State, work_unit_id: str) -> None:
        state.set(self.key(work_unit_id), {
            "budgets": list(self.budgets), "usd": usd(self.usd), "tok": self.rate_tokens,
            "rated": list(self.rated), "stok": self.session_tokens, "call": self.call,
            "status": self.status})


@dataclass(frozen=True, slots=True)
class BudgetAccount:
    """A budget's account: what its charges and holds add up to. A session's budget is
    stored with it (the first submission's word, or an operator's); a tenant's credit is
    the deployment's setting."""

    scope: str
    budget: Decimal | None = None
    charged: Decimal = ZERO
    reserved: Decimal = ZERO

    @staticmethod
    def key(scope: str) -> str:
        return f"b:{scope}"

    @classmethod
    def load(cls, state: State, scope: str) -> BudgetAccount | None:
        d = state.get(cls.key(scope))
        if d is None:
            return None
        return cls(scope, _decimal(d["budget"]), Decimal(d["charged"]), Decimal(d["reserved"]))

    @classmethod
    def load_or_new(cls, state: State, scope: str) -> BudgetAccount:
        return cls.load(state, scope) or cls(scope)

    def save(self, state: State) -> None:
        state.set(self.key(self.scope), {"budget": _amount(self.budget),
                                         "charged": usd(self.charged),
                                         "reserved": usd(self.reserved)})


# -- rate windows -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateWindow:
    """A token bucket in logged time: its level (negative while owed) at a time."""

    level: float
    at: int

    @classmethod
    def load(cls, state: State, key: str) -> RateWindow | None:
        d = state.get(key)
        return None if d is None else cls(d["level"], d["at"])

    def save(self, state: State, key: str) -> None:
        state.set(key, {"level": self.level, "at": self.at})

    @classmethod
    def moved_to(cls, state: State, key: str, level: float, at: int) -> None:
        """Record a level a fact carries; time that runs back does not move `at` back."""
        prev = cls.load(state, key)
        cls(level, at if prev is None else max(prev.at, at)).save(state, key)


# -- one decision's view ------------------------------------------------------------------


@dataclass
class Tentative:
    """What a decision has granted so far, before any of it is folded: a queue scan grants
    several requests in one decision, each seeing the ones before it."""

    slots: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, Decimal] = field(default_factory=dict)
    levels: dict[str, float] = field(default_factory=dict)
    #: sessions' usage after this decision's grants (by session scope text), and the
    #: sessions it found at a limit
    usage: dict[str, Any] = field(default_factory=dict)
    reached: set[str] = field(default_factory=set)
