"""Operator controls: pause, resume and cancel a unit, a session, a tenant or the whole queue.

A control is a command on the control topic (`control.requested`, with its
actor and reason). A unit's lands on the unit's partition and is applied
there. A wider one lands on one partition, which records it and sends it on
to every partition (as a provider pause is sent, `backoff`); each partition
applies it to its own units and records what it did (`control.applied`, with
the outcome and its counts), so the outcome is on the log and a replay decides
the same.

- *pause*: the scope is paused in the partition; nothing in it is placed or
  granted (a unit due for placement is deferred `paused`, a claim is refused);
  attempts already running finish;
- *resume*: the pause is lifted; the partition's paused units that no other
  pause holds are placed again on the next tick;
- *cancel*: the scope's units that are not done are cancelled, queued ones and
  running ones alike; a running unit's node is told on its dispatch partition
  and its agent stops the handler; nothing reported afterwards is accepted.
  Whether a cancel or a completion wins is the order of the two in the unit's
  partition, the same on every replay.

State: `ctl:<target>` an active pause (`queue`, `tenant:<t>`,
`session:<t>/<s>`, `unit:<id>`), `ctl-pauses` how many, `ctl-version` a
number that grows with every pause and resume (a tick looks at the paused
units again only when it changed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from onceflow.schemas import (
    PLATFORM_TENANT,
    ContentRef,
    ControlApplied,
    ControlHumanInputSubmitted,
    ControlOutcome,
    ControlRequested,
    Event,
    Scope,
    SettlementReason,
    SlotDenied,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitRejected,
)
from onceflow.streams.ids import caused_by, derive_event_id, restated
from onceflow.streams.limits import LIMITS_ACTOR
from onceflow.streams.scheduler._impl.admission import deferred, placed
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.dependencies import notify_dependents
from onceflow.streams.scheduler._impl.pauses import (
    PAUSES,
    QUEUE_TARGET,
    VERSION,
    control_version,
    unit_target,
)
from onceflow.streams.scheduler._impl.slots import release_slots
from onceflow.streams.scheduler._impl.unit import UnitRecord
from onceflow.streams.types import Routed, State

__all__ = [
    "cancel_unit",
    "close_failed",
    "complete_with",
    "evolve_control_applied",
    "fail_fast",
    "on_control",
    "on_human_input",
    "on_slot_denied",
    "route_cancelled",
    "route_control",
    "target_of",
]



def target_of(event: ControlRequested) -> str:
    """What a control acts on, as a name: queue, tenant:<t>, session:<t>/<s>, unit:<id>."""
    if event.scope == "queue":
        return QUEUE_TARGET
    if event.scope == "tenant":
        return str(Scope.of_tenant(event.tenant_id))
    if event.scope == "session":
        return str(Scope.of_session(event.tenant_id, event.execution_session_id))
    return unit_target(event.work_unit_id or "")


def _in_scope(ctx: SchedulerContext, state: State, event: ControlRequested
              ) -> Iterator[UnitRecord]:
    """The partition's units a control acts on that are not done, in id order (only the
    acting tenant's: a session or tenant scope names its tenant, a unit is checked)."""
    if event.scope == "unit":
        unit = ctx.load_for(state, event.work_unit_id or "", event.tenant_id)
        if unit is not None and not unit.terminal:
            yield unit
        return
    # A rare, operator-driven scan of the partition's units (no index is kept for it).
    for _, raw in state.items("u:"):
        if event.scope != "queue" and raw["tenant"] != event.tenant_id:
            continue
        if event.scope == "session" and raw["session"] != event.execution_session_id:
            continue
        unit = UnitRecord.from_state(raw)
        if not unit.terminal:
            yield unit


def on_control(ctx: SchedulerContext, state: State, event: ControlRequested) -> Sequence[Event]:
    """A control as asked (a wider one is recorded and sent on) or as sent on (applied)."""
    if event.scope != "unit" and event.broadcast:
        return (restated(event, "control-received"),)
    return _apply(ctx, state, event)


def _apply(ctx: SchedulerContext, state: State, event: ControlRequested) -> list[Event]:
    now = event.occurred_at
    target = target_of(event)
    partition = ctx.reports.partition_of(event.work_unit_id or "") if event.scope == "unit" \
        else _partition_of_copy(event)
    facts: list[Event] = []
    units = list(_in_scope(ctx, state, event))
    outcome: ControlOutcome = "applied"
    detail = ""
    cancelled = stopping = resumed = 0
    if event.scope == "unit" and ctx.load_for(state, event.work_unit_id or "",
                                              event.tenant_id) is None:
        outcome, detail = "not_found", f"unknown work unit {event.work_unit_id}"
    elif event.scope == "queue" and event.tenant_id != PLATFORM_TENANT:
        units = []
        outcome, detail = "refused", (
            f"the queue holds every tenant's work: tenant {event.tenant_id} may pause, resume "
            "or cancel its own (scope tenant), only the platform's operator the queue")
    elif event.scope == "unit" and not units:
        outcome, detail = "refused", f"work unit {event.work_unit_id} is already done"
    elif event.action in ("approve", "deny") and event.scope != "unit":
        outcome, detail = "refused", f"{event.action} names one work unit, not a {event.scope}"
    elif event.action in ("approve", "deny"):
        (unit,) = units
        if not (unit.status == "waiting" and unit.reason == "awaiting_approval"):
            outcome, detail = "refused", (f"work unit {unit.work_unit_id} is not waiting for an "
                                          f"approval (it is {unit.status})")
        elif event.action == "approve":
            detail = f"work unit {unit.work_unit_id} approved"
            facts.append(placed(ctx, state, unit.but(approved=True), event, now, "approved"))
        else:
            detail = f"work unit {unit.work_unit_id} denied: nothing applied"
            facts.extend(close_failed(ctx, state, unit, event, now, "approval_denied",
                                      f"denied by {event.requested_by}: {event.reason}"))
    elif event.action == "pause":
        paused = state.get(f"ctl:{target}") is not None
        detail = (f"{target} was paused already" if paused
                  else f"{target} paused: {len(units)} unit(s) here not done")
    elif event.action == "resume":
        pause = state.get(f"ctl:{target}")
        if pause is None:
            outcome, detail = "refused", f"{target} is not paused"
        elif pause["by"] == LIMITS_ACTOR and event.requested_by != LIMITS_ACTOR:
            outcome, detail = "refused", (
                f"{target} is parked at one of its limits ({pause.get('reason', '')}): raise the limit "
                "with onceflow session limits, which resumes it, or cancel it")
        else:
            resumed = sum(1 for u in units if u.status == "deferred" and u.reason == "paused")
            detail = f"{target} resumed: {resumed} paused unit(s) here placed again"
    else:
        for unit in units:
            facts.extend(cancel_unit(ctx, state, unit, event, now))
            if unit.status == "granted":
                stopping += 1
            else:
                cancelled += 1
        detail = (f"{target} cancelled: {cancelled} queued and {stopping} running unit(s) "
                  "here")
    if outcome == "applied" and not units and event.action != "pause":
        outcome = "none_here"
    facts.insert(0, ControlApplied(
        **caused_by(event, f"control-applied:{partition}", occurred_at=now),
        control_id=(event.causation_id or event.event_id
                    if not event.broadcast and event.scope != "unit" else event.event_id),
        action=event.action, scope=event.scope, target=target,
        requested_by=event.requested_by, reason=event.reason, outcome=outcome,
        detail=detail, partition=partition, cancelled=cancelled, stopping=stopping,
        resumed=resumed))
    return facts


def _partition_of_copy(event: ControlRequested) -> int:
    """The partition a copy was sent to: its id says (see `route_control`)."""
    return int(event.event_id.rsplit(":", 1)[-1]) if ":" in event.event_id else 0


def cancel_unit(ctx: SchedulerContext, state: State, unit: UnitRecord, cause: Event, now: int,
                *, reason: str = "", requested_by: str = "") -> list[Event]:
    """Cancel one unit that is not done: its slots back, its node told if it runs, its
    dependents failed."""
    if isinstance(cause, ControlRequested):
        reason, requested_by = reason or cause.reason, requested_by or cause.requested_by
    running = unit.status == "granted"
    cancelled = WorkUnitCancelled(
        **ctx.envelope(unit, cause, "cancelled", now), reason=reason, requested_by=requested_by,
        node_id=unit.node if running else "", attempt_index=unit.attempt if running else 0,
        control_id=cause.event_id if isinstance(cause, ControlRequested) else "")
    return [*release_slots(ctx, unit, cause, now, "cancelled"), cancelled,
            *notify_dependents(ctx, state, unit, cause, now, "failed", None)]


def on_slot_denied(ctx: SchedulerContext, state: State, event: SlotDenied
                   ) -> Sequence[Event]:
    """The limiter refused the unit: for good (its budget), and the unit is rejected, with
    why; or its session is at a limit, and the unit waits with its session, paused, or is
    cancelled with it, as the session's policy says."""
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "waiting_for_slot":
        return ()
    if event.reason_code == "SESSION_LIMIT":
        if event.on_limit == "cancel":
            return cancel_unit(ctx, state, unit, event, event.occurred_at, reason=event.reason,
                               requested_by=LIMITS_ACTOR)
        # it waits with its session; its request ended with the denial, so it holds no slot
        # (the release says so to the unit's record; the limiter has nothing to free)
        return (deferred(ctx, unit, event, event.occurred_at, "paused", event.reason,
                         role="placed"),
                *release_slots(ctx, unit, event, event.occurred_at, "rejected"))
    # Rejected after admission: its dependents are told, or they would wait forever.
    return (WorkUnitRejected(
        **ctx.envelope(unit, event, "rejected", event.occurred_at),
        reason_code=event.reason_code, reason=event.reason, decided_at=event.occurred_at,
    ), *notify_dependents(ctx, state, unit, event, event.occurred_at, "failed", None))


def on_human_input(ctx: SchedulerContext, state: State, event: ControlHumanInputSubmitted
                   ) -> Sequence[Event]:
    """A person's answer to an input step: the step completes with it as its result, and its
    dependents get it like a parent's result. Anything else is refused, saying why."""
    now = event.occurred_at
    wu = event.work_unit_id or ""
    unit = ctx.load_for(state, wu, event.tenant_id)
    detail = ""
    if unit is None:
        detail = f"unknown work unit {wu}"
    elif unit.spec.kind != "input":
        detail = f"work unit {wu} is not an input step (it is a {unit.spec.kind} unit)"
    elif not (unit.status == "waiting" and unit.reason == "awaiting_input"):
        detail = f"input step {wu} is not waiting for an answer (it is {unit.status})"
    elif event.schema_error:
        # refused on the log too, not only at the client: the step keeps waiting
        detail = f"the answer to {wu} does not fit its schema: {event.schema_error}"
    record = ControlApplied(
        **caused_by(event, "control-applied", occurred_at=now), control_id=event.event_id,
        action="answer", scope="unit", target=unit_target(wu), requested_by=event.submitted_by,
        outcome="not_found" if unit is None else "refused" if detail else "applied",
        detail=detail or f"input step {wu} answered", partition=ctx.reports.partition_of(wu))
    if detail or unit is None:
        return (record,)
    return [record, *complete_with(ctx, state, unit, event, now, event.input_ref, "human_input")]


def complete_with(ctx: SchedulerContext, state: State, unit: UnitRecord, cause: Event, now: int,
                  ref: ContentRef | None, reason: SettlementReason) -> list[Event]:
    """Settle a unit that ran nowhere with a result it was given (an answer, a default)."""
    return [WorkUnitCompleted(
        **ctx.envelope(unit, cause, "settled", now), selected_node_id="",
        attempt_index=max(1, unit.attempt), result_ref=ref, kind=unit.spec.kind, accepted=True,
        settlement_reason=reason, submitted_at=unit.submitted_at, finished_at=now,
    ), *notify_dependents(ctx, state, unit, cause, now, "completed", ref)]


def close_failed(ctx: SchedulerContext, state: State, unit: UnitRecord, cause: Event, now: int,
                 code: str, reason: str) -> list[Event]:
    """End a unit that never ran as failed (an approval denied or never given): fail closed."""
    return [WorkUnitFailed(
        **ctx.envelope(unit, cause, code, now), selected_node_id="",
        attempt_index=max(1, unit.attempt), error_code=code, error_reason=reason, final=True,
        reported_by_scheduler=True,
    ), *notify_dependents(ctx, state, unit, cause, now, "failed", None)]


def evolve_control_applied(ctx: SchedulerContext, state: State, fact: ControlApplied) -> None:
    if fact.outcome in ("refused", "not_found"):
        return
    if fact.action == "approve":
        unit = ctx.load(state, fact.work_unit_id or "")
        if unit is not None:
            ctx.save(state, unit, unit.but(approved=True))
        return
    key = f"ctl:{fact.target}"
    if fact.action == "pause" and state.get(key) is None:
        state.set(key, {"control": fact.control_id, "by": fact.requested_by,
                        "at": fact.occurred_at, "reason": fact.reason})
        state.set(PAUSES, state.get(PAUSES, 0) + 1)
        state.set(VERSION, control_version(state) + 1)
    elif fact.action == "resume" and state.get(key) is not None:
        state.delete(key)
        left = state.get(PAUSES, 0) - 1
        if left > 0:
            state.set(PAUSES, left)
        else:
            state.delete(PAUSES)
        state.set(VERSION, control_version(state) + 1)


#: who cancels a session whose failed step's policy is fail_fast
FAIL_FAST_ACTOR = "onceflow:fail_fast"


def fail_fast(ctx: SchedulerContext, state: State, facts: Sequence[Event]) -> list[Event]:
    """A final failure of a step whose session fails fast cancels the session: a cancel
    sent on to every partition (recorded like an operator's), one per session."""
    out: list[Event] = []
    done: set[tuple[str, str]] = set()
    for fact in facts:
        if not (isinstance(fact, WorkUnitFailed) and fact.final):
            continue
        unit = ctx.load(state, fact.work_unit_id or "")
        if unit is None or unit.spec.failure_policy != "fail_fast":
            continue
        key = (unit.tenant_id, unit.session_id)
        if key in done:
            continue
        done.add(key)
        out.append(ControlRequested(
            **caused_by(fact, "fail-fast"), action="cancel", scope="session",
            requested_by=FAIL_FAST_ACTOR,
            reason=f"step {unit.work_unit_id} failed ({fact.error_code}) and its session "
                   "fails fast"))
    return out


def route_control(ctx: SchedulerContext, fact: ControlRequested) -> Sequence[Routed]:
    """A wider control as received, to every partition (each applies it to its units)."""
    if fact.scope == "unit" or not fact.broadcast:
        return ()
    return tuple(
        Routed(ctx.reports.name, fact.model_copy(update={
            "event_id": f"{derive_event_id(fact.event_id, 'sent-on')}:{p}",
            "causation_id": fact.causation_id, "broadcast": False}), p)
        for p in range(ctx.reports.partitions)
    )


def route_cancelled(ctx: SchedulerContext, fact: WorkUnitCancelled) -> Sequence[Routed]:
    """A running unit's cancel, to its node's dispatch partition: the agent stops it."""
    if not fact.node_id:
        return ()
    return (Routed(ctx.dispatch.name, fact, ctx.dispatch.partition_of(fact.node_id)),)
