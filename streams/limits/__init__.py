"""Concurrency limits: slots per scope (global, tenant, session, provider, model, tool).

A single-writer limiter over the one-partition `limits` topic counts them for
every scheduler partition; the scheduler asks before it places a unit with a
limited scope and gives the slots back when the unit's attempt ends.
"""

from onceflow.streams.limits._impl.limiter import Limiter
from onceflow.streams.limits._impl.scopes import ConcurrencyLimits, LimitsFileError
from onceflow.streams.limits.settings import LimitsSettings

__all__ = ["ConcurrencyLimits", "Limiter", "LimitsFileError", "LimitsSettings"]
