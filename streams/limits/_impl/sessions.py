"""A session's execution limits, the limiter's side: what it has used, and the rules.

A session's steps live in every scheduler partition, so what it has used is
counted where every attempt asks before it runs: the limiter. Each grant
counts a step (its first attempt), an attempt, and an LLM call (an attempt
of an `llm_pod` unit), and holds the most tokens the call may use until the
ledger bills what it did use. Wall time runs in logged time from the
session's first grant. Cost is the session budget (`Budget`), held the same
way.

A request that would go past a limit is not granted: the session is at its
limit (`SessionLimitCrossed`, reached) and, as its policy says, parked or
cancelled. At 80 % of a limit a warning is recorded, once per limit, with the
counts that crossed it.

State: `x:<tenant>/<session>` a `SessionUsage`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from onceflow.schemas import Scope, SessionLimitName, SessionLimits, SessionLimitThreshold
from onceflow.streams.types import State

if TYPE_CHECKING:
    from onceflow.streams.limits._impl.records import SlotRequest

__all__ = ["LIMITS_ACTOR", "WARN_AT", "LimitCrossing", "SessionUsage", "usage_key"]

#: who asks for a session's pause or cancel when it reaches a limit (`control.requested`)
LIMITS_ACTOR = "onceflow:limits"
#: the share of a limit at which a warning is recorded
WARN_AT = Decimal("0.8")


def usage_key(tenant: str, session: str) -> str:
    return f"x:{Scope.of_session(tenant, session).session_key}"


@dataclass(frozen=True, slots=True)
class LimitCrossing:
    """A limit a session came to: its name, what is used against what is allowed."""

    limit: SessionLimitName
    threshold: SessionLimitThreshold
    used: str
    maximum: str

    @property
    def detail(self) -> str:
        what = "reached" if self.threshold == "reached" else "at 80 % of"
        return f"{what} its {self.limit}: {self.used} of {self.maximum}"


@dataclass(frozen=True, slots=True)
class SessionUsage:
    """What a session with execution limits has used, as the limiter counts it."""

    tenant: str
    session: str
    limits: SessionLimits
    started_at: int
    steps: int = 0
    attempts: int = 0
    llm_calls: int = 0
    #: tokens billed by the ledger (input plus output)
    tokens: int = 0
    #: tokens held for calls that have not been billed yet
    tokens_held: int = 0
    #: the limits a warning was recorded for (until the limits change)
    warned: tuple[str, ...] = ()
    #: the limit the session reached ('' none): it admits nothing more until it changes
    reached: str = ""

    @property
    def scope(self) -> Scope:
        return Scope.of_session(self.tenant, self.session)

    @classmethod
    def load(cls, state: State, tenant: str, session: str) -> SessionUsage | None:
        d = state.get(usage_key(tenant, session))
        if d is None:
            return None
        return cls(tenant, session, SessionLimits.model_validate(d["limits"]), d["start"],
                   d["steps"], d["attempts"], d["llm"], d["tokens"], d["held"],
                   tuple(d["warned"]), d["reached"])

    def save(self, state: State) -> None:
        state.set(usage_key(self.tenant, self.session), {
            "limits": self.limits.model_dump(mode="json", exclude_defaults=True),
            "start": self.started_at, "steps": self.steps, "attempts": self.attempts,
            "llm": self.llm_calls, "tokens": self.tokens, "held": self.tokens_held,
            "warned": list(self.warned), "reached": self.reached})

    def after_grant(self, attempt: int, kind: str, session_tokens: int) -> SessionUsage:
        """The usage once a request (or a grant) of this attempt and kind is counted."""
        return replace(
            self, steps=self.steps + (1 if attempt == 1 else 0),
            attempts=self.attempts + 1,
            llm_calls=self.llm_calls + (1 if kind == "llm_pod" else 0),
            tokens_held=self.tokens_held + session_tokens)

    # -- the rules ---------------------------------------------------------------------

    def reached_by(self, req: SlotRequest, now: int) -> LimitCrossing | None:
        """The limit granting `req` would go past (None: it stays within every one).

        Counts first, then tokens (the most the call may use must fit in what is
        left, whatever else runs), then wall time. Cost is the session budget's.
        """
        lim = self.limits
        nxt = self.after_grant(req.attempt, req.kind, req.session_tokens)
        counts: tuple[tuple[SessionLimitName, int, int | None], ...] = (
            ("max_steps", nxt.steps, lim.max_steps),
            ("max_attempts", nxt.attempts, lim.max_attempts),
            ("max_llm_calls", nxt.llm_calls, lim.max_llm_calls))
        for name, used, maximum in counts:
            if maximum is not None and used > maximum and (
                    name != "max_steps" or req.attempt == 1) and (
                    name != "max_llm_calls" or req.kind == "llm_pod"):
                return LimitCrossing(name, "reached", str(used - 1), str(maximum))
        if lim.max_tokens is not None and (
                self.tokens >= lim.max_tokens or self.tokens + req.session_tokens > lim.max_tokens):
            return LimitCrossing("max_tokens", "reached", f"{self.tokens} billed",
                                 f"{lim.max_tokens} (this call may use {req.session_tokens})")
        if lim.max_wall_time_ms is not None and now - self.started_at >= lim.max_wall_time_ms:
            return LimitCrossing("max_wall_time_ms", "reached", str(now - self.started_at),
                                 str(lim.max_wall_time_ms))
        return None

    def tokens_wait(self, req: SlotRequest) -> str | None:
        """Why the request waits for running calls' token holds to settle (None: it fits)."""
        lim = self.limits.max_tokens
        if lim is None or not req.session_tokens:
            return None
        if self.tokens + self.tokens_held + req.session_tokens <= lim:
            return None
        return (f"session {self.scope.session_key} max_tokens {lim}: {self.tokens} billed, "
                f"{self.tokens_held} held for running calls, this call may use "
                f"{req.session_tokens}")

    def warnings(self, now: int, cost: tuple[Decimal, Decimal] | None = None
                 ) -> list[LimitCrossing]:
        """The limits this usage is at 80 % of that were not warned of yet. `cost`: the
        session budget's (used with holds, budget)."""
        lim = self.limits
        out: list[LimitCrossing] = []
        checks: list[tuple[SessionLimitName, Decimal, Decimal | int | None]] = [
            ("max_steps", Decimal(self.steps), lim.max_steps),
            ("max_attempts", Decimal(self.attempts), lim.max_attempts),
            ("max_llm_calls", Decimal(self.llm_calls), lim.max_llm_calls),
            ("max_tokens", Decimal(self.tokens + self.tokens_held), lim.max_tokens),
            ("max_wall_time_ms", Decimal(max(0, now - self.started_at)), lim.max_wall_time_ms),
        ]
        if cost is not None:
            checks.append(("max_cost_usd", cost[0], cost[1]))
        for name, used, maximum in checks:
            if maximum is None or name in self.warned or used < WARN_AT * Decimal(maximum):
                continue
            out.append(LimitCrossing(name, "warning", _shown(used), _shown(Decimal(maximum))))
        return out

    def room_left(self, now: int, cost: tuple[Decimal, Decimal] | None = None) -> bool:
        """Whether the session is under every limit (a parked one may then go on)."""
        lim = self.limits
        for used, maximum in ((self.steps, lim.max_steps), (self.attempts, lim.max_attempts),
                              (self.llm_calls, lim.max_llm_calls), (self.tokens, lim.max_tokens),
                              (now - self.started_at, lim.max_wall_time_ms)):
            if maximum is not None and used >= maximum:
                return False
        return cost is None or cost[0] < cost[1]


def _shown(value: Decimal) -> str:
    return f"{value.normalize():f}" if value == value.to_integral() else f"{value:.6f}"

