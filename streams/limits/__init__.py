"""Flow control: concurrency slots, request and token rates, and budget holds, per scope.

A single-writer limiter over the one-partition `limits` topic counts them for
every scheduler partition; the scheduler asks before it places a unit with a
limited scope (or a budget) and gives the slots back when the unit's attempt
ends; the ledger tells it what each unit was billed, which ends the unit's
budget hold.
"""

from onceflow.streams.limits._impl.limiter import Budget, Limiter
from onceflow.streams.limits._impl.scopes import (
    LimitsFileError,
    ScopeLimits,
    budgets_held,
    limiter_needed,
)
from onceflow.streams.limits._impl.sessions import LIMITS_ACTOR, SessionUsage
from onceflow.streams.limits.settings import LimitsSettings

__all__ = ["LIMITS_ACTOR", "Budget", "Limiter", "LimitsFileError", "LimitsSettings", "ScopeLimits",
           "SessionUsage", "budgets_held", "limiter_needed"]
