"""Dependencies between units, across partitions: a child waits until every parent completed.

A child registers with each parent's partition (`workunit.dependency.registered`,
keyed by the parent); the parent's single writer answers at once if it has
ended, or lists the child and notifies it when it ends. The answer travels to
the child's partition as `workunit.dependency.resolved`.

Two ways a child could wait forever are closed:

- *a parent nobody submits*: a parent may be submitted after its child (the
  partitions are read independently), so its partition waits for it until
  `unknown_parent_ms` of logged time after the first child registered, then
  tells its children it never came (`unknown`) and they fail `unknown_parent`;
- *a cycle*: when a child registers with a parent that itself waits, a probe
  follows the waits from parent to parent (edge chasing, one hop per
  partition), carrying the chain. A unit whose pending parent is already in
  the chain closes a cycle: it fails `depends_on_cycle`, and its dependents
  (the rest of the cycle) fail with it. Each unit forwards a chain's probe
  once per origin, and chains stop at `cycle_probe_depth`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from onceflow.schemas import (
    ClockTick,
    ContentRef,
    Event,
    WorkUnitDependencyProbe,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
    WorkUnitSubmitted,
)
from onceflow.streams.ids import caused_by, restated
from onceflow.streams.scheduler._impl.admission import placed
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.unit import (
    UnitRecord,
    deps_key,
    forget_orphan,
    index_key,
    orphan_key,
    probed_prefix,
)
from onceflow.streams.types import Routed, State

__all__ = [
    "evolve_dependency_probe",
    "evolve_dependency_registered",
    "evolve_dependency_resolved",
    "notify_dependents",
    "on_dependency_probe",
    "on_dependency_registered",
    "on_dependency_resolved",
    "orphans_due",
    "route_dependency_probe",
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


def _pending(unit: UnitRecord) -> list[str]:
    """The parents a unit still waits on (none once it is placed, or done)."""
    if unit.terminal or unit.status != "waiting" or unit.reason != "waiting_on_parents":
        return []
    return sorted(p for p in set(unit.spec.depends_on) if p not in unit.parents)


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
    recorded = restated(event, "recorded", parent_outcome=outcome, parent_result_ref=ref)
    if parent is None or outcome:
        return (recorded,)
    # the parent waits too: look for a cycle through the child
    chain = [event.child_work_unit_id, parent.work_unit_id]
    return (recorded, *_probes(ctx, event, parent, chain, event.occurred_at))


def _probes(ctx: SchedulerContext, cause: Event, unit: UnitRecord, chain: list[str], now: int
            ) -> list[Event]:
    """A probe to each parent `unit` waits on, carrying the chain of waits that ends at it."""
    if len(chain) >= ctx.cfg.cycle_probe_depth:
        return []
    return [WorkUnitDependencyProbe(
        **caused_by(cause, f"probe:{parent}", work_unit_id=parent, occurred_at=now,
                    tenant_id=unit.tenant_id, execution_session_id=unit.session_id),
        path=chain) for parent in _pending(unit)]


def on_dependency_probe(ctx: SchedulerContext, state: State, event: WorkUnitDependencyProbe
                        ) -> Sequence[Event]:
    """A chain of waits reached this unit: it closes a cycle, or the search goes on."""
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or not event.path:
        return ()
    pending = _pending(unit)
    closing = [p for p in pending if p in event.path]
    now = event.occurred_at
    if closing:
        start = event.path.index(closing[0])
        cycle = [*event.path[start:], unit.work_unit_id, closing[0]]
        failed = WorkUnitFailed(
            **ctx.envelope(unit, event, "cycle", now), attempt_index=max(1, unit.attempt),
            error_code="depends_on_cycle",
            error_reason="depends_on closes a cycle: " + " -> ".join(reversed(cycle))
            + " (each waits on the next); remove one of these dependencies",
            final=True, reported_by_scheduler=True)
        return [failed, *notify_dependents(ctx, state, unit, event, now, "failed", None)]
    if state.get(_probed_key(unit.work_unit_id, event.path[0])) is not None:
        return ()  # this origin's search came through here already
    return _probes(ctx, event, unit, [*event.path, unit.work_unit_id], now)


def _probed_key(unit: str, origin: str) -> str:
    return f"{probed_prefix(unit)}{origin}"


def orphans_due(ctx: SchedulerContext, state: State, tick: ClockTick, now: int, budget: int
                ) -> list[Event]:
    """Parents nobody submitted in time: their children are told they never came."""
    facts: list[Event] = []
    for parent, _at in ctx.due(state, "orphan", now, budget):
        if ctx.load(state, parent) is not None:
            continue
        facts.extend(
            WorkUnitDependencyRegistered(
                **caused_by(tick, f"orphan:{parent}:{child}", work_unit_id=parent,
                            occurred_at=now),
                child_work_unit_id=child, parent_outcome="unknown")
            for child in state.get(deps_key(parent), []))
    return facts


def on_dependency_resolved(ctx: SchedulerContext, state: State,
                           event: WorkUnitDependencyResolved) -> Sequence[Event]:
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "waiting" or event.parent_work_unit_id in unit.parents:
        return ()
    recorded = restated(event, "resolved")
    now = event.occurred_at
    if event.outcome != "completed":
        unknown = event.outcome == "unknown"
        failed = WorkUnitFailed(
            **ctx.envelope(unit, event, "parent-failed", now),
            attempt_index=max(1, unit.attempt),
            error_code="unknown_parent" if unknown else "parent_failed",
            error_reason=(f"parent {event.parent_work_unit_id} was never submitted (waited "
                          f"{ctx.cfg.unknown_parent_ms} ms): submit it or fix depends_on"
                          if unknown else
                          f"parent {event.parent_work_unit_id} did not complete"),
            final=True, reported_by_scheduler=True,
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
    parent = fact.work_unit_id or ""
    key = deps_key(parent)
    children = [c for c in state.get(key, []) if c != fact.child_work_unit_id]
    if not fact.parent_outcome:
        children = sorted([*children, fact.child_work_unit_id])
        if state.get(orphan_key(parent)) is None and ctx.load(state, parent) is None:
            # nobody submitted the parent yet: it may still come, until this deadline
            at = fact.occurred_at + ctx.cfg.unknown_parent_ms
            state.set(orphan_key(parent), at)
            state.set(index_key("orphan", at, parent), 1)
            ctx.floors.lower(state, "orphan", at)
    elif fact.parent_outcome == "unknown" and not children:
        forget_orphan(state, parent)
    if children:
        state.set(key, children)
    else:
        state.delete(key)


def evolve_dependency_probe(ctx: SchedulerContext, state: State,
                            fact: WorkUnitDependencyProbe) -> None:
    """A probe this partition sent on: its last hop will not send that origin's again."""
    if len(fact.path) >= 2:
        state.set(_probed_key(fact.path[-1], fact.path[0]), 1)


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
        outcome=("completed" if fact.parent_outcome == "completed" else
                 "unknown" if fact.parent_outcome == "unknown" else "failed"),
        result_ref=fact.parent_result_ref,
    ), ctx.reports.partition_of(child)),)


def route_dependency_probe(ctx: SchedulerContext, fact: WorkUnitDependencyProbe
                           ) -> Sequence[Routed]:
    """A probe, to the partition of the unit it looks at next."""
    return (Routed(ctx.reports.name, fact, ctx.reports.partition_of(fact.work_unit_id or "")),)
