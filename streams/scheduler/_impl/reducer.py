"""The scheduler: the single writer of every work unit's state machine.

A pure reducer. Inputs are what clients submit, what node agents report
(claims, staged effects, results, failures), the clock ticks that ride on
the same report partitions, dependency notices between partitions, and
operator actions. Every state change is one of its facts, so folding the
work-unit topic from offset 0 rebuilds the state bit for bit.

The logic is split by concern, one module each: `admission` (admission and
placement), `settlement` (claims and settlement), `clock` (ticks, leases,
queue samples), `dependencies`, `operator`. This module only wires them:
one handler per event type for each of decide, evolve and route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from onceflow.schemas import (
    ClaimGranted,
    ClaimRejected,
    ClaimRequested,
    ClockTick,
    ControlApplied,
    ControlHumanInputSubmitted,
    ControlOperatorResolved,
    ControlRequested,
    ControlSessionCancelRequested,
    EffectStaged,
    Event,
    ProviderScopePaused,
    QueueSampled,
    RetryDenied,
    RetryGranted,
    RetryRequested,
    SlotDenied,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotRequested,
    StateRetired,
    WorkUnitAttemptFailed,
    WorkUnitAttemptStopped,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitDependencyProbe,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
    WorkUnitFailureReported,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitResultReported,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
    WorkUnitSubmitted,
)
from onceflow.streams.scheduler._impl import (
    admission,
    backoff,
    clock,
    control,
    dependencies,
    operator,
    retention,
    settlement,
    slots,
)
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.unit import ClaimWaits, QueueCounters, UnitRecord
from onceflow.streams.scheduler._impl.view import ClusterView
from onceflow.streams.topics.catalog import TopicCatalog, partition_for
from onceflow.streams.types import CostEstimator, Reducer, Routed, State

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["Scheduler"]

Decide = Callable[[SchedulerContext, State, Any], Sequence[Event]]
#: a fact about one unit: the unit's next record, or None when it does not change
EvolveUnit = Callable[[SchedulerContext, State, UnitRecord, Any], UnitRecord | None]
#: a fact about the partition's other tables (new units, dependency lists, the queue)
EvolveTable = Callable[[SchedulerContext, State, Any], None]
Route = Callable[[SchedulerContext, Any], Sequence[Routed]]

_DECIDE: dict[type[Event], Decide] = {
    WorkUnitSubmitted: admission.on_submitted,
    ClaimRequested: settlement.on_claim,
    EffectStaged: settlement.on_staged,
    WorkUnitResultReported: settlement.on_reported,
    WorkUnitCompleted: settlement.on_legacy_completed,
    WorkUnitFailureReported: settlement.on_failure_reported,
    WorkUnitAttemptFailed: settlement.on_legacy_failure,
    WorkUnitAttemptStopped: settlement.on_legacy_failure,
    ClockTick: clock.on_tick,
    WorkUnitDependencyRegistered: dependencies.on_dependency_registered,
    WorkUnitDependencyResolved: dependencies.on_dependency_resolved,
    WorkUnitDependencyProbe: dependencies.on_dependency_probe,
    ControlOperatorResolved: operator.on_operator,
    ControlSessionCancelRequested: operator.on_cancel,
    ControlRequested: control.on_control,
    ControlHumanInputSubmitted: control.on_human_input,
    ProviderScopePaused: backoff.on_scope_paused,
    SlotGranted: admission.on_slot_granted,
    SlotDenied: control.on_slot_denied,
    SlotQueued: slots.on_slot_queued,
    RetryGranted: settlement.on_retry_granted,
    RetryDenied: settlement.on_retry_denied,
}

#: the inputs whose decision can fail a unit for good (the hot path's claims, reports and
#: submissions cannot: they are not looked through for a session that fails fast)
_MAY_FAIL_A_UNIT: frozenset[type[Event]] = frozenset({
    WorkUnitFailureReported, WorkUnitAttemptFailed, ClockTick, WorkUnitDependencyResolved, WorkUnitDependencyProbe,
    ControlRequested, ControlOperatorResolved, RetryDenied})

_EVOLVE_TABLE: dict[type[Event], EvolveTable] = {
    WorkUnitSubmitted: admission.evolve_submitted,
    WorkUnitDependencyRegistered: dependencies.evolve_dependency_registered,
    WorkUnitDependencyProbe: dependencies.evolve_dependency_probe,
    QueueSampled: clock.evolve_queue_sampled,
    ProviderScopePaused: backoff.evolve_scope_paused,
    ControlApplied: control.evolve_control_applied,
    StateRetired: retention.evolve_retired,
}

_EVOLVE_UNIT: dict[type[Event], EvolveUnit] = {
    WorkUnitScheduled: admission.evolve_scheduled,
    WorkUnitDeferred: admission.evolve_deferred,
    WorkUnitRejected: admission.evolve_rejected,
    ClaimGranted: settlement.evolve_granted,
    EffectStaged: settlement.evolve_staged,
    WorkUnitCompleted: settlement.evolve_completed,
    WorkUnitFailed: settlement.evolve_failed,
    WorkUnitAttemptFailed: settlement.evolve_attempt_failed,
    WorkUnitAttemptStopped: settlement.evolve_attempt_stopped,
    WorkUnitRetryScheduled: settlement.evolve_retry_scheduled,
    RetryRequested: settlement.evolve_retry_requested,
    WorkUnitNeedsOperator: settlement.evolve_needs_operator,
    WorkUnitCancelled: operator.evolve_cancelled,
    WorkUnitDependencyResolved: dependencies.evolve_dependency_resolved,
    SlotRequested: slots.evolve_slot_requested,
    SlotQueued: slots.evolve_slot_queued,
    SlotReleased: slots.evolve_slot_released,
}

_ROUTE: dict[type[Event], Route] = {
    WorkUnitScheduled: admission.route_scheduled,
    ClaimGranted: settlement.route_claim_answer,
    ClaimRejected: settlement.route_claim_answer,
    WorkUnitCompleted: settlement.route_attempt_outcome,
    WorkUnitAttemptFailed: settlement.route_attempt_outcome,
    QueueSampled: clock.route_queue_sampled,
    WorkUnitSubmitted: dependencies.route_submitted,
    WorkUnitDependencyRegistered: dependencies.route_dependency_registered,
    WorkUnitDependencyProbe: dependencies.route_dependency_probe,
    ProviderScopePaused: backoff.route_scope_paused,
    SlotRequested: slots.route_to_limiter,
    SlotReleased: slots.route_to_limiter,
    RetryRequested: slots.route_to_limiter,
    ControlRequested: control.route_control,
    WorkUnitCancelled: control.route_cancelled,
}


class Scheduler(Reducer):
    """Admission, placement, claims, settlement and recovery, as one pure reducer.

    `estimator` prices a unit for its budget hold, fair queuing and token rate
    limits; billing provides it (`onceflow.billing.cost_estimator`), so the
    scheduler prices work by the ledger's own price book.
    """

    name = "scheduler"
    #: release 6 moved the retry budget to the limiter: an older store is rebuilt
    state_layout = "scheduler-6"

    def __init__(
        self,
        settings: StreamsSettings,
        view: ClusterView | None = None,
        catalog: TopicCatalog | None = None,
        estimator: CostEstimator | None = None,
    ) -> None:
        self.view = view or ClusterView()
        catalog = catalog or TopicCatalog(settings)
        self.ctx = SchedulerContext.create(settings, self.view, catalog, estimator)
        self._partitions = catalog["workunits"].partitions

    def observe(self, event: Event) -> None:
        self.view.observe(event)

    def restored(self, partition: int) -> None:
        # A tick that looked at the deferred and paused units may have been aborted with
        # its transaction: the next tick looks at them again.
        self.ctx.examined.pop(partition, None)
        self.ctx.examined_controls.pop(partition, None)
        # and its placements may never have reached a node: they take no slots
        n = self._partitions
        self.view.forget_dispatches(lambda wu: partition_for(wu, n) == partition)

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        handler = _DECIDE.get(type(event))
        if handler is None:
            return ()
        facts = handler(self.ctx, state, event)
        if type(event) in _MAY_FAIL_A_UNIT and any(
                isinstance(f, WorkUnitFailed) and f.final for f in facts):
            # a session that fails fast is cancelled by its first failed step
            return [*facts, *control.fail_fast(self.ctx, state, facts)]
        return facts

    def evolve(self, state: State, fact: Event) -> None:
        table = _EVOLVE_TABLE.get(type(fact))
        if table is not None:
            table(self.ctx, state, fact)
            return
        step = _EVOLVE_UNIT.get(type(fact))
        if step is None:
            return
        before = self.ctx.load(state, fact.work_unit_id or "")
        if before is None:
            return
        after = step(self.ctx, state, before, fact)
        if after is None:
            return
        if after.status != before.status or after.reason != before.reason:
            self._count(state, before, after, fact)
        self.ctx.save(state, before, after)

    def _count(self, state: State, before: UnitRecord, after: UnitRecord, fact: Event) -> None:
        """Keep the partition's queue counters (what `QueueSampled` reports) in step."""
        q = QueueCounters.load(state)
        q.move(before.queue_bucket(), after.queue_bucket())
        q.save(state)
        if isinstance(fact, ClaimGranted):
            ClaimWaits.add(state, max(0, fact.occurred_at - after.submitted_at))

    def route(self, fact: Event) -> Sequence[Routed]:
        handler = _ROUTE.get(type(fact))
        return () if handler is None else handler(self.ctx, fact)
