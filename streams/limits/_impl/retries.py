"""Each tenant's retry budget: one token bucket per tenant, whatever the partitions.

A tenant's units live in every scheduler partition, so a budget kept per
partition is a share of it that runs out early or late depending on where
the failures land. The limiter is the one writer of every tenant's scope, so
it keeps the bucket: a scheduler partition asks it (`flow.retry.requested`)
before it schedules a retry the budget pays for, and it answers
`flow.retry.granted` or `flow.retry.denied` with the bucket's level after,
which is what its changelog folds (a replay counts the same).
"""

from __future__ import annotations

from dataclasses import dataclass

from onceflow.schemas import RetryDenied, RetryGranted, RetryRequested
from onceflow.streams.ids import caused_by
from onceflow.streams.limits._impl.rates import refilled
from onceflow.streams.limits._impl.records import RateWindow
from onceflow.streams.types import State

__all__ = ["RetryBudget"]

@dataclass(frozen=True)
class RetryBudget:
    """Retries a tenant may spend in a burst, and how fast they come back (Krako 2.0: 40,
    refilled 20 a minute of logged time)."""

    capacity: float = 40
    per_minute: float = 20

    @staticmethod
    def key(tenant: str) -> str:
        return f"rt:{tenant}"

    def level(self, state: State, tenant: str, now: int) -> float:
        return refilled(RateWindow.load(state, self.key(tenant)), self.capacity,
                        self.per_minute, now)

    def decide(self, state: State, event: RetryRequested) -> RetryGranted | RetryDenied:
        level = self.level(state, event.tenant_id, event.occurred_at)
        if level >= 1:
            return RetryGranted(**caused_by(event, "retry-granted"),
                                attempt_index=event.attempt_index, error_code=event.error_code,
                                budget_left=round(level - 1, 9))
        return RetryDenied(
            **caused_by(event, "retry-denied"), attempt_index=event.attempt_index,
            error_code=event.error_code, budget_left=round(level, 9),
            reason=f"tenant {event.tenant_id} spent its retry budget ({self.capacity:g} "
                   f"retries, refilled {self.per_minute:g} a minute): {level:.2f} left")

    def evolve(self, state: State, fact: RetryGranted) -> None:
        RateWindow.moved_to(state, self.key(fact.tenant_id), fact.budget_left, fact.occurred_at)
