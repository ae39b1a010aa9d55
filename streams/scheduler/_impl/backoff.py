"""Provider backoff: a provider that answers 429 or 503 pauses its scope for everyone.

The agent reports the failed attempt with the time the provider named
(`Retry-After`); the scheduler retries the unit at that time without counting
it as a failure, and records a pause of the unit's LLM scope, which it sends
to every scheduler partition: until then no partition dispatches that scope's
units, so a burst does not turn into a retry storm. A pause is a fact in each
partition's log, so a replay decides the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from onceflow.schemas import (
    Event,
    ProviderScopePaused,
    Scope,
    WorkUnitAttemptFailed,
    WorkUnitFailureReported,
    WorkUnitRetryScheduled,
)
from onceflow.streams.ids import derive_event_id, restated
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.slots import release_slots
from onceflow.streams.scheduler._impl.unit import UnitRecord, UnitSpec
from onceflow.streams.types import Routed, State

__all__ = [
    "BACKOFF",
    "evolve_scope_paused",
    "on_backoff",
    "on_scope_paused",
    "paused_until",
    "route_scope_paused",
    "scope_of",
]

#: the error code of an attempt its provider turned away for a while
BACKOFF = "provider_backoff"


def scope_of(spec: UnitSpec) -> str | None:
    """The LLM scope a unit's calls count against (None: it makes none)."""
    return str(Scope.of_model(spec.model)) if spec.kind == "llm_pod" else None


def _pause_key(scope: str) -> str:
    return f"pause:{scope}"


def paused_until(state: State, scope: str) -> int:
    """Until when (logged ms) a scope is paused in this partition; 0: it is not."""
    until: int = state.get(_pause_key(scope), 0)
    return until


def on_backoff(ctx: SchedulerContext, state: State, unit: UnitRecord,
               event: WorkUnitFailureReported) -> list[Event]:
    """The grant holder's provider said "later": retry then, uncounted, and pause the scope."""
    now = event.occurred_at
    until = max(event.retry_at, now)
    facts: list[Event] = [WorkUnitAttemptFailed(
        **ctx.envelope(unit, event, "attempt-failed", now), selected_node_id=unit.node,
        attempt_index=unit.attempt, correlation_id=unit.spec.correlation_id,
        error_code=BACKOFF, error_reason=event.error_reason, retryable=True,
        incarnation=unit.incarnation, retry_at=until, provider=event.provider,
        model=event.model, cpu_seconds=event.cpu_seconds,
    )]
    facts.extend(release_slots(ctx, unit, event, now, "attempt_ended"))
    scope = scope_of(unit.spec)
    if scope is not None and until > paused_until(state, scope):
        facts.append(ProviderScopePaused(
            **ctx.envelope(unit, event, "provider-paused", now), scope=scope,
            paused_until=until, provider=event.provider, model=event.model,
        ))
    facts.append(WorkUnitRetryScheduled(
        **ctx.envelope(unit, event, "retry", now), attempt_index=unit.attempt + 1,
        delay_ms=until - now, retry_at=until, error_code=BACKOFF, reason_code="provider_backoff",
    ))
    return facts


def on_scope_paused(ctx: SchedulerContext, state: State, event: ProviderScopePaused
                    ) -> Sequence[Event]:
    """Another partition's pause (or this one's, back from the broadcast)."""
    if event.paused_until <= paused_until(state, event.scope):
        return ()
    return (restated(event, "pause-recorded", broadcast=False),)


def evolve_scope_paused(ctx: SchedulerContext, state: State, fact: ProviderScopePaused) -> None:
    if fact.paused_until > paused_until(state, fact.scope):
        state.set(_pause_key(fact.scope), fact.paused_until)


def route_scope_paused(ctx: SchedulerContext, fact: ProviderScopePaused) -> Sequence[Routed]:
    """The pause a partition decided, to every partition (a recorded copy goes nowhere)."""
    if not fact.broadcast:
        return ()
    return tuple(
        Routed(ctx.reports.name, fact.model_copy(update={
            "event_id": derive_event_id(fact.event_id, f"broadcast:{p}"),
            "causation_id": fact.event_id}), p)
        for p in range(ctx.reports.partitions)
    )
