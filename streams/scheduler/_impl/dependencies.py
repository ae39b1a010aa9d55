"""Dependencies between units, across partitions: a child waits until every parent completed.

A child registers with each parent's partition (`workunit.dependency.registered`,
keyed by the parent); the parent's single writer answers at once if it has
ended, or lists the child and notifies it when it ends. The answer travels to
the child's partition as `workunit.dependency.resolved`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from onceflow.schemas import (
    ContentRef,
    Event,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
    WorkUnitSubmitted,
)
from onceflow.streams.ids import caused_by, restated
from onceflow.streams.scheduler._impl.admission import placed
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.unit import UnitRecord, deps_key
from onceflow.streams.types import Routed, State

__all__ = [
    "evolve_dependency_registered",
    "evolve_dependency_resolved",
    "notify_dependents",
    "on_dependency_registered",
    "on_dependency_resolved",
    "route_dependency_registered",
    "route_submitted",
]


def notify_dependents(ctx: SchedulerContext, state: State, unit: UnitRecord, cause: Event,
                      now: int, outcome: Literal["completed", "failed"],
                      ref: ContentRef | None) -> list[Event]:
    """A unit ended: tell each child that waits on it (in child order)."""
    children: list[str] = state.get(deps_key(unit.work_unit_id), [])
    return [
        WorkUnitDependencyRegistered(
            **ctx.envelope(unit, cause, f"notify:{child}", now),
            child_work_unit_id=child, parent_outcome=outcome, parent_result_ref=ref,
        )
        for child in children
    ]


def on_dependency_registered(ctx: SchedulerContext, state: State,
                             event: WorkUnitDependencyRegistered) -> Sequence[Event]:
    if event.parent_outcome:
        return ()  # our own notice, seen again
    parent = ctx.load(state, event.work_unit_id or "")
    outcome: Literal["", "completed", "failed"] = ""
    ref = None
    if parent is not None and parent.status == "completed":
        outcome, ref = "completed", parent.result_ref
    elif parent is not None and parent.terminal:
        outcome = "failed"
    return (restated(event, "recorded", parent_outcome=outcome, parent_result_ref=ref),)


def on_dependency_resolved(ctx: SchedulerContext, state: State,
                           event: WorkUnitDependencyResolved) -> Sequence[Event]:
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "waiting" or event.parent_work_unit_id in unit.parents:
        return ()
    recorded = restated(event, "resolved")
    now = event.occurred_at
    if event.outcome != "completed":
        failed = WorkUnitFailed(
            **ctx.envelope(unit, event, "parent-failed", now),
            attempt_index=max(1, unit.attempt), error_code="parent_failed",
            error_reason=f"parent {event.parent_work_unit_id} did not complete", final=True,
            reported_by_scheduler=True,
        )
        return [recorded, failed,
                *notify_dependents(ctx, state, unit, event, now, "failed", None)]
    ready = unit.but(parents={**unit.parents, event.parent_work_unit_id: event.result_ref})
    if not ready.parents_done():
        return (recorded,)
    return (recorded, placed(ctx, state, ready, event, now, "placed"))


# -- evolve ----------------------------------------------------------------------------


def evolve_dependency_registered(ctx: SchedulerContext, state: State,
                                 fact: WorkUnitDependencyRegistered) -> None:
    """List a waiting child under its parent; drop it once the parent has answered."""
    key = deps_key(fact.work_unit_id or "")
    children = [c for c in state.get(key, []) if c != fact.child_work_unit_id]
    if not fact.parent_outcome:
        children = sorted([*children, fact.child_work_unit_id])
    if children:
        state.set(key, children)
    else:
        state.delete(key)


def evolve_dependency_resolved(ctx: SchedulerContext, state: State, unit: UnitRecord,
                               fact: WorkUnitDependencyResolved) -> UnitRecord:
    return unit.but(parents={**unit.parents, fact.parent_work_unit_id: fact.result_ref})


# -- route -----------------------------------------------------------------------------


def route_submitted(ctx: SchedulerContext, fact: WorkUnitSubmitted) -> Sequence[Routed]:
    """An admitted child registers with each parent's partition."""
    reports = ctx.reports
    return tuple(
        Routed(reports.name, WorkUnitDependencyRegistered(
            **caused_by(fact, f"depends-on:{parent}", work_unit_id=parent),
            child_work_unit_id=fact.work_unit_id or "",
        ), reports.partition_of(parent))
        for parent in sorted(set(fact.depends_on))
    )


def route_dependency_registered(ctx: SchedulerContext, fact: WorkUnitDependencyRegistered
                                ) -> Sequence[Routed]:
    """A parent's answer, to the child's partition."""
    if not fact.parent_outcome:
        return ()
    child = fact.child_work_unit_id
    return (Routed(ctx.reports.name, WorkUnitDependencyResolved(
        **caused_by(fact, "resolved-notice", work_unit_id=child),
        parent_work_unit_id=fact.work_unit_id or "",
        outcome="completed" if fact.parent_outcome == "completed" else "failed",
        result_ref=fact.parent_result_ref,
    ), ctx.reports.partition_of(child)),)
