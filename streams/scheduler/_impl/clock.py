"""The clock and the leases: what a tick finds due, and the queue sample it takes.

Ticks ride on the report partitions. An agent records `effect.staged` (and
waits for the broker's ack) before it acts, and never starts acting after
its lease deadline. A tick at or after that deadline is produced later in
wall time, so in the shared partition it comes after any staged record, and
the scheduler cannot miss a staged effect when it decides what an expired
lease means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onceflow.schemas import ClockTick, Event, QueueSampled, WorkUnitDeferred
from onceflow.streams.ids import caused_by
from onceflow.streams.scheduler._impl.admission import placed
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.control import close_failed, complete_with
from onceflow.streams.scheduler._impl.dependencies import orphans_due
from onceflow.streams.scheduler._impl.pauses import control_version, paused_by
from onceflow.streams.scheduler._impl.retention import retire_due
from onceflow.streams.scheduler._impl.settlement import attempt_ended
from onceflow.streams.scheduler._impl.unit import (
    WAITING_FOR_A_PERSON,
    ClaimWaits,
    QueueCounters,
    UnitRecord,
)
from onceflow.streams.types import Routed, State

__all__ = ["evolve_queue_sampled", "on_tick", "route_queue_sampled"]


def on_tick(ctx: SchedulerContext, state: State, tick: ClockTick) -> Sequence[Event]:
    now = tick.occurred_at
    facts: list[Event] = []
    budget = ctx.cfg.deferred_per_tick
    for wu, _at in ctx.due(state, "lease", now, budget):
        unit = ctx.load(state, wu)
        if unit is None:
            continue
        if unit.status == "scheduled":
            # Nobody claimed it: nothing ran, so any label may be placed again.
            ctx.view.note_arrived(unit.node, wu)
            facts.append(placed(ctx, state, unit, tick, now, f"reclaim:{unit.attempt}"))
        elif unit.status == "granted":
            facts.extend(attempt_ended(
                ctx, state, unit, tick, now, "node_timeout",
                f"lease of attempt {unit.attempt} on {unit.node} ended at "
                f"{unit.deadline} without a completion",
            ))
    budget -= len(facts)
    hopeless: set[tuple[Any, ...]] = set()  # shapes that found no node in this tick
    examine_deferred = ctx.examined.get(tick.partition) != ctx.view.version
    ctx.examined[tick.partition] = ctx.view.version
    # paused units are looked at again only after a pause or resume in this partition
    version = control_version(state)
    examine_paused = ctx.examined_controls.get(tick.partition) != version
    ctx.examined_controls[tick.partition] = version
    for kind, until in (("retry", now), ("deferred", None), ("paused", None)):
        if budget <= 0 or (kind == "deferred" and not examine_deferred) or (
                kind == "paused" and not examine_paused):
            continue
        for wu, _at in ctx.due(state, kind, until, budget):  # type: ignore[arg-type]
            unit = ctx.load(state, wu)
            if unit is None:
                continue
            if unit.status == "waiting" and unit.reason in WAITING_FOR_A_PERSON:
                expired = _deadline_passed(ctx, state, unit, tick, now)
                facts.extend(expired)
                budget -= len(expired)
                continue
            fact = _look_again(ctx, state, unit, tick, now, hopeless)
            if fact is not None:
                facts.append(fact)
                budget -= 1
    if budget > 0:
        facts.extend(orphans_due(ctx, state, tick, now, budget))
    sample = _sample(ctx, state, tick, now)
    if sample is not None:
        facts.append(sample)
    retired = retire_due(ctx, state, tick, now)
    if retired is not None:
        facts.append(retired)
    return facts


def _deadline_passed(ctx: SchedulerContext, state: State, unit: UnitRecord, tick: ClockTick,
                     now: int) -> list[Event]:
    """Nobody answered in time: an approval fails closed (nothing applied); an input step
    takes its declared default (its `input_ref`) or fails."""
    if unit.reason == "awaiting_input" and unit.spec.input_ref is not None:
        return complete_with(ctx, state, unit, tick, now, unit.spec.input_ref, "input_default")
    code = "approval_expired" if unit.reason == "awaiting_approval" else "input_expired"
    what = "approval" if unit.reason == "awaiting_approval" else "answer"
    return close_failed(ctx, state, unit, tick, now, code, f"no {what} by {unit.retry_at}")


def _look_again(ctx: SchedulerContext, state: State, unit: UnitRecord, tick: ClockTick,
                now: int, hopeless: set[tuple[Any, ...]]) -> Event | None:
    """A due retry or a deferred unit, looked at again; None when nothing changed."""
    deferred = unit.status == "deferred"
    if deferred and unit.reason == "paused" and paused_by(state, unit) is not None:
        return None  # still paused: no new fact
    if (deferred and unit.reason == "throttled" and ctx.view.mode == "THROTTLED"
            and unit.spec.priority not in ctx.cfg.throttled_admits):
        return None
    shape = unit.spec.shape()
    # Only a unit already deferred for want of a node waits on the nodes (looked at again
    # when they change); any other that is looked at and cannot be placed is deferred
    # for its new reason. Left where it was, it would not be looked at again: the paused
    # index waits for a control, a time entry is behind the scan's floor once passed, and
    # a unit held by THROTTLED admission that now needs an approval must ask for it.
    no_node = deferred and unit.reason == "no_eligible_node"
    if no_node and shape in hopeless:
        return None
    fact = placed(ctx, state, unit, tick, now, f"place:{unit.attempt}")
    if isinstance(fact, WorkUnitDeferred):
        if fact.reason_code == "provider_paused":
            # the pause was extended: the unit is due again at its new end
            same = deferred and unit.reason == "provider_paused" and unit.retry_at == fact.retry_at
            return None if same else fact
        if fact.reason_code == "no_eligible_node":
            hopeless.add(shape)
            if no_node:
                return None  # still nowhere to go; no new fact, no change
    return fact


def _sample(ctx: SchedulerContext, state: State, tick: ClockTick, now: int
            ) -> QueueSampled | None:
    """The partition's queue, once per `queue_sample_ms` of logged time."""
    q = QueueCounters.load(state)
    if now - q.sampled_at < ctx.cfg.queue_sample_ms:
        return None
    waits = sorted(ClaimWaits.load(state))
    p95 = float(waits[min(len(waits) - 1, int(0.95 * len(waits)))]) if waits else 0.0
    live = [n for n in ctx.view.nodes.values() if now - n.last_seen <= ctx.cfg.node_expiry_ms]
    util = round(sum(n.utilization for n in live) / len(live), 4) if live else 0.0
    return QueueSampled(
        **caused_by(tick, "queue-sampled", occurred_at=now), partition=tick.partition,
        queue=q.queued, deferred=q.deferred, throttled=q.throttled, running=q.granted,
        wait_p95_ms=p95, waits_sampled=len(waits), node_count=len(live), utilization=util,
        admission_mode=ctx.view.mode,
    )


def evolve_queue_sampled(ctx: SchedulerContext, state: State, fact: QueueSampled) -> None:
    """A sample starts the next window of claim waits."""
    ClaimWaits.clear(state)
    q = QueueCounters.load(state)
    q.sampled_at = fact.occurred_at
    q.save(state)


def route_queue_sampled(ctx: SchedulerContext, fact: QueueSampled) -> Sequence[Routed]:
    return (Routed(ctx.queue.name, fact, 0),)
