"""Bounded state: a session's account is forgotten once idle a horizon and holding nothing.

Once per step of logged time (a sixteenth of the horizon) the limiter looks
for the sessions whose account has not changed for a horizon, and forgets
them by a fact (`processor.state.retired`), so a replay forgets the same at
the same point; a session that comes back later starts a new account.
"""

from __future__ import annotations

from onceflow.schemas import Event, Scope, StateRetired
from onceflow.streams.ids import caused_by
from onceflow.streams.limits._impl.records import ZERO, BudgetAccount
from onceflow.streams.limits._impl.sessions import SessionUsage, usage_key
from onceflow.streams.state.generations import retention_step_ms
from onceflow.streams.types import State

__all__ = ["evolve_retired", "idle_sessions", "touch"]

#: how many sessions one fact forgets at most
_RETIRE_PER_FACT = 1000
#: the step of logged time the limiter last looked for idle sessions in
_RETIRED_STEP = "retired-step"


def _idle_key(at: int, name: str) -> str:
    # sessions' accounts by when they last changed, oldest first
    return f"i:{at:013d}:{name}"


def _last_key(name: str) -> str:
    return f"il:{name}"


def idle_sessions(state: State, event: Event, moved: set[str], horizon_ms: int,
                  processor: str) -> StateRetired | None:
    """The sessions (`<tenant>/<session>`) whose account a horizon left idle and holding
    nothing, save those this decision `moved`; None when this step was looked at."""
    step_ms = retention_step_ms(horizon_ms)
    now = event.occurred_at
    if now // step_ms <= state.get(_RETIRED_STEP, 0) or now <= horizon_ms:
        return None
    idle = []
    for key, _ in state.items("i:", stop=_idle_key(now - horizon_ms + 1, "")):
        name = key.split(":", 2)[2]
        if name in moved:
            continue
        scope = Scope.parse(f"session:{name}")
        usage = SessionUsage.load(state, scope.tenant, scope.name)
        budget = BudgetAccount.load(state, str(scope))
        if (usage is None or not usage.tokens_held) and (
                budget is None or budget.reserved == ZERO):
            idle.append(name)
        if len(idle) >= _RETIRE_PER_FACT:
            break
    return StateRetired(**caused_by(event, "state-retired"), processor=processor,
                        horizon_ms=horizon_ms, inputs_until=0, work_unit_ids=[],
                        sessions=idle)


def touch(state: State, fact: Event) -> None:
    """A session's account changed: it is idle from now on."""
    if not fact.execution_session_id:
        return
    scope = Scope.of_session(fact.tenant_id, fact.execution_session_id)
    name = scope.session_key
    if usage_key(scope.tenant, scope.name) not in state and \
            BudgetAccount.key(str(scope)) not in state:
        return
    before = state.get(_last_key(name))
    if before is not None and before >= fact.occurred_at:
        return
    if before is not None:
        state.delete(_idle_key(before, name))
    state.set(_idle_key(fact.occurred_at, name), 1)
    state.set(_last_key(name), fact.occurred_at)


def evolve_retired(state: State, fact: StateRetired) -> None:
    for name in fact.sessions:
        at = state.get(_last_key(name))
        if at is not None:
            state.delete(_idle_key(at, name))
        scope = Scope.parse(f"session:{name}")
        for key in (_last_key(name), usage_key(scope.tenant, scope.name),
                    BudgetAccount.key(str(scope))):
            state.delete(key)
    step_ms = retention_step_ms(fact.horizon_ms)
    if len(fact.sessions) < _RETIRE_PER_FACT:
        state.set(_RETIRED_STEP, fact.occurred_at // step_ms)
