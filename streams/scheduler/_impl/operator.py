"""Operator actions: resolving a unit that waits for an operator, and cancelling a unit.

Both are events on the log (`control.operator.resolved`,
`control.cancel.requested`), so what an operator did replays like anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

from onceflow.schemas import (
    ControlApplied,
    ControlOperatorResolved,
    ControlSessionCancelRequested,
    Event,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitRetryScheduled,
)
from onceflow.streams.ids import caused_by
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.control import cancel_unit
from onceflow.streams.scheduler._impl.dependencies import notify_dependents
from onceflow.streams.scheduler._impl.pauses import unit_target
from onceflow.streams.scheduler._impl.unit import UnitRecord
from onceflow.streams.types import State

__all__ = ["evolve_cancelled", "on_cancel", "on_operator"]


def on_operator(ctx: SchedulerContext, state: State, event: ControlOperatorResolved
                ) -> Sequence[Event]:
    """An operator's resolution of a parked unit, recorded with its outcome: a second one
    (or one for a unit that is not parked) is refused, saying why."""
    wu = event.work_unit_id or ""
    unit = ctx.load_for(state, wu, event.tenant_id)
    now = event.occurred_at
    detail = ""
    if unit is None:
        detail = f"unknown work unit {wu}"
    elif unit.status != "needs_operator":
        detail = f"work unit {wu} is not waiting for an operator (it is {unit.status})"
    record = ControlApplied(
        **caused_by(event, "control-applied", occurred_at=now), control_id=event.event_id,
        action="resolve", scope="unit", target=unit_target(wu), requested_by=event.operator,
        reason=event.note,
        outcome="not_found" if unit is None else "refused" if detail else "applied",
        detail=detail or f"work unit {wu}: {event.resolution}",
        partition=ctx.reports.partition_of(wu))
    if unit is None or detail:
        return (record,)
    return [record, *_resolve(ctx, state, unit, event, now)]


def _resolve(ctx: SchedulerContext, state: State, unit: UnitRecord,
             event: ControlOperatorResolved, now: int) -> list[Event]:
    if event.resolution == "retry":
        return [WorkUnitRetryScheduled(
            **ctx.envelope(unit, event, "retry", now), attempt_index=unit.attempt + 1,
            delay_ms=0, retry_at=now, reason_code="operator_retry",
        )]
    if event.resolution == "mark_done":
        done = WorkUnitCompleted(
            **ctx.envelope(unit, event, "settled", now), selected_node_id=unit.node,
            attempt_index=unit.attempt, result_ref=event.result_ref, kind=unit.spec.kind,
            accepted=True, settlement_reason="operator_mark_done",
            submitted_at=unit.submitted_at, finished_at=now,
        )
        return [done, *notify_dependents(ctx, state, unit, event, now, "completed",
                                         event.result_ref)]
    failed = WorkUnitFailed(
        **ctx.envelope(unit, event, "abandoned", now), selected_node_id=unit.node,
        attempt_index=max(1, unit.attempt), error_code="abandoned_by_operator",
        error_reason=event.note, final=True, reported_by_scheduler=True,
    )
    return [failed, *notify_dependents(ctx, state, unit, event, now, "failed", None)]


def on_cancel(ctx: SchedulerContext, state: State, event: ControlSessionCancelRequested
              ) -> Sequence[Event]:
    """A unit's cancel (the release-1 command; `control.requested` is the general one)."""
    unit = ctx.load_for(state, event.work_unit_id or "", event.tenant_id)
    if unit is None or unit.terminal:
        return ()
    return cancel_unit(ctx, state, unit, event, event.occurred_at, reason=event.reason,
                       requested_by=event.requested_by)


def evolve_cancelled(ctx: SchedulerContext, state: State, unit: UnitRecord,
                     fact: WorkUnitCancelled) -> UnitRecord:
    return unit.but(status="cancelled", reason="cancelled")
