"""Bounded state: settled units are forgotten a retention horizon after they settled.

A unit's record, its index entries and (in the shell) the dedupe marks of
its inputs are working state: what deciding its next step needs. Once it has
settled and the horizon (logged time, `retention_horizon_ms`) has passed, no
next step can come, so a tick retires it with a fact (`StateRetired`) and
the partition's state stays the size of a horizon's work. Its facts stay in
the log: `why`, sessions and the ledger read them there.

What a forgotten unit can no longer answer is a duplicate of its submission.
A redelivered submission carries its original logged time; the partition
remembers the newest submission time among the units it has retired
(`inputs_until`), and refuses a submission that old as `beyond_horizon`
rather than run it a second time (the submission's time, not the last
decision's, so that a node whose clock runs ahead cannot move the line). A new submission
of a retired unit's id, with a new time, runs as a new unit: as Temporal lets
a workflow id be reused once its run is past the namespace's retention.
"""

from __future__ import annotations

from onceflow.schemas import ClockTick, StateRetired, WorkUnitRejected, WorkUnitSubmitted
from onceflow.streams.ids import caused_by
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.unit import (
    UnitRecord,
    index_key,
    probed_prefix,
    unit_key,
)
from onceflow.streams.state.generations import retention_step_ms
from onceflow.streams.types import State

__all__ = ["RETIRED_KEY", "STEP_KEY", "beyond_horizon", "evolve_retired", "retire_due"]

#: the newest submission time among the partition's retired units
RETIRED_KEY = "retired-before"
#: the step of logged time the partition last said what it forgot in
STEP_KEY = "retired-step"


def retire_due(ctx: SchedulerContext, state: State, tick: ClockTick, now: int
               ) -> StateRetired | None:
    """The settled units whose last decision is a horizon before `now`, oldest first."""
    if not ctx.horizon_ms or now <= ctx.horizon_ms:
        return None
    rows = ctx.due_entries(state, "settled", now - ctx.horizon_ms, ctx.cfg.retired_per_tick)
    last_step = state.get(STEP_KEY, 0)
    if not rows and (not last_step or now // retention_step_ms(ctx.horizon_ms) <= last_step):
        return None
    # Even with nothing to forget, once a step after the first: the readers that forget
    # what the scheduler forgets (the ledger lets go of what it held a horizon for a unit
    # forgotten) learn the partition's time when it is quiet.
    return StateRetired(
        **caused_by(tick, "state-retired", occurred_at=now), processor="scheduler",
        horizon_ms=ctx.horizon_ms,
        inputs_until=max([s for _, _, s in rows], default=state.get(RETIRED_KEY, 0)),
        work_unit_ids=[wu for wu, _, _ in rows],
    )



def evolve_retired(ctx: SchedulerContext, state: State, fact: StateRetired) -> None:
    for wu in fact.work_unit_ids:
        unit = ctx.load(state, wu)
        if unit is None:
            continue
        entry = ctx.index_of(unit)
        if entry is not None:
            state.delete(index_key(entry[0], entry[1], wu))
        state.delete(unit_key(wu))
        if unit.spec.depends_on:  # only a unit with parents passes a cycle search on
            for key, _ in list(state.items(probed_prefix(wu))):
                state.delete(key)
    if fact.inputs_until > state.get(RETIRED_KEY, 0):
        state.set(RETIRED_KEY, fact.inputs_until)
    state.set(STEP_KEY, fact.occurred_at // retention_step_ms(fact.horizon_ms))


def beyond_horizon(ctx: SchedulerContext, state: State, event: WorkUnitSubmitted
                   ) -> WorkUnitRejected | None:
    """A submission of an unknown unit that is older than units this partition has
    forgotten: it may be a redelivery of one of them, so it is not run."""
    retired = state.get(RETIRED_KEY, 0)
    if not retired or event.occurred_at > retired:
        return None
    unit = UnitRecord.submitted(event, "")
    return WorkUnitRejected(
        **ctx.envelope(unit, event, "beyond-horizon", event.occurred_at),
        reason_code="beyond_horizon",
        reason=f"work unit {unit.work_unit_id} was submitted at {event.occurred_at}, no later "
               f"than the newest unit this partition has forgotten ({retired}; retention "
               f"horizon {ctx.horizon_ms} ms): it cannot be told from a redelivery of a "
               "forgotten unit; submit it again as a new event",
        decided_at=event.occurred_at,
    )
