"""The capacity controller: scale requests and admission modes from fixed windows of logged time.

A pure reducer over the scheduler's queue samples (`queue`, one partition).
Samples are folded into the current window (each one recorded as a fact, so
folding the `capacity` topic rebuilds the window); the first sample at or
after the window's end closes it. A closed window's metrics:

- queue: the sum over scheduler partitions of each one's latest queue (work
  waiting for capacity; units THROTTLED admission holds back are apart);
- wait p95: the worst partition's p95 of submit-to-grant waits;
- utilization: the mean node utilization the schedulers saw.

Rules (every number a setting): scale up by one when queue > 200 or wait
p95 > 2 s or utilization > 0.80 for 3 windows in a row (cooldown 60 s, at
most 20); scale down by one when queue < 40 and wait p95 < 1 s and
utilization < 0.45 for 6 windows (cooldown 180 s since any scaling, at
least 1). Modes: THROTTLED at queue >= 900; CRITICAL at queue >= 1000 for 3
windows; from CRITICAL back to THROTTLED below 900; OPEN after 6 windows
below 500. Each window's fact records its metrics and the streaks, replicas,
mode and cooldown times it started from, so `recheck` re-runs the decision
from the record alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from onceflow.autoscaler.settings import AutoscalerSettings
from onceflow.schemas import (
    CapacityAdmissionModeChanged,
    CapacityScaleRequested,
    CapacityWindowClosed,
    Event,
    QueueSampled,
)
from onceflow.streams.ids import derive_event_id
from onceflow.streams.types import Reducer, State

__all__ = ["CapacityController", "Metrics", "Position", "recheck", "step"]

_KEY = "controller"


@dataclass(frozen=True)
class Metrics:
    queue: int
    throttled: int
    wait_p95_ms: float
    utilization: float
    node_count: int
    samples: int


@dataclass(frozen=True)
class Position:
    """What the controller carries from one window to the next."""

    up: int = 0
    down: int = 0
    critical: int = 0
    open: int = 0
    replicas: int = 1
    mode: str = "OPEN"
    last_up: int = 0
    last_down: int = 0


def step(pos: Position, m: Metrics, end: int, cfg: AutoscalerSettings
         ) -> tuple[Position, str, str | None, str | None]:
    """One window's rules: (new position, decision, scale reason, mode reason)."""
    up_now = (m.queue > cfg.scale_up_queue or m.wait_p95_ms > cfg.scale_up_wait_p95_ms
              or m.utilization > cfg.scale_up_utilization)
    down_now = (m.queue < cfg.scale_down_queue and m.wait_p95_ms < cfg.scale_down_wait_p95_ms
                and m.utilization < cfg.scale_down_utilization)
    new = replace(pos, up=pos.up + 1 if up_now else 0, down=pos.down + 1 if down_now else 0,
                  critical=pos.critical + 1 if m.queue >= cfg.critical_queue else 0,
                  open=pos.open + 1 if m.queue < cfg.open_queue else 0)
    decision, scale_reason, mode_reason = "", None, None
    last_any = max(pos.last_up, pos.last_down)
    if (new.up >= cfg.scale_up_windows and pos.replicas < cfg.max_replicas
            and (pos.last_up == 0 or end - pos.last_up >= cfg.scale_up_cooldown_ms)):
        why = [w for w, hit in (
            (f"queue {m.queue} > {cfg.scale_up_queue}", m.queue > cfg.scale_up_queue),
            (f"wait p95 {m.wait_p95_ms:.0f} ms > {cfg.scale_up_wait_p95_ms:.0f} ms",
             m.wait_p95_ms > cfg.scale_up_wait_p95_ms),
            (f"utilization {m.utilization:.2f} > {cfg.scale_up_utilization:.2f}",
             m.utilization > cfg.scale_up_utilization)) if hit]
        scale_reason = f"{'; '.join(why)} for {new.up} windows"
        new = replace(new, replicas=pos.replicas + 1, up=0, last_up=end)
        decision = "scale_up"
    elif (new.down >= cfg.scale_down_windows and pos.replicas > cfg.min_replicas
          and (last_any == 0 or end - last_any >= cfg.scale_down_cooldown_ms)):
        scale_reason = (f"queue {m.queue} < {cfg.scale_down_queue}, wait p95 "
                        f"{m.wait_p95_ms:.0f} ms, utilization {m.utilization:.2f} for "
                        f"{new.down} windows")
        new = replace(new, replicas=pos.replicas - 1, down=0, last_down=end)
        decision = "scale_down"
    mode = pos.mode
    if mode != "CRITICAL" and new.critical >= cfg.critical_windows:
        mode, mode_reason = "CRITICAL", f"queue >= {cfg.critical_queue} for {new.critical} windows"
    elif mode == "OPEN" and m.queue >= cfg.throttle_queue:
        mode, mode_reason = "THROTTLED", f"queue {m.queue} >= {cfg.throttle_queue}"
    elif mode == "CRITICAL" and m.queue < cfg.throttle_queue:
        mode, mode_reason = "THROTTLED", f"queue {m.queue} < {cfg.throttle_queue}"
    elif mode != "OPEN" and new.open >= cfg.open_windows:
        mode, mode_reason = "OPEN", f"queue < {cfg.open_queue} for {new.open} windows"
    if mode != pos.mode:
        new = replace(new, mode=mode)
        decision = f"{decision}+mode:{mode}" if decision else f"mode:{mode}"
    return new, decision, scale_reason, mode_reason


def recheck(window: CapacityWindowClosed, cfg: AutoscalerSettings) -> tuple[Position, str]:
    """The decision a closed window's record leads to, from the record alone."""
    before = Position(window.previous_up_streak, window.previous_down_streak,
                      window.previous_critical_streak, window.previous_open_streak,
                      window.previous_replicas, window.previous_mode,
                      window.previous_last_scale_up_at, window.previous_last_scale_down_at)
    metrics = Metrics(window.queue_depth, window.throttled, window.wait_p95_ms,
                      window.utilization, window.node_count, window.samples)
    after, decision, _, _ = step(before, metrics, window.window_end, cfg)
    return after, decision


def _metrics(samples: dict[str, Any]) -> Metrics:
    rows = [samples[k] for k in sorted(samples)]
    return Metrics(
        queue=sum(r["queue"] for r in rows), throttled=sum(r["throttled"] for r in rows),
        wait_p95_ms=max((r["wait_p95_ms"] for r in rows), default=0.0),
        utilization=round(sum(r["utilization"] for r in rows) / len(rows), 4) if rows else 0.0,
        node_count=max((r["node_count"] for r in rows), default=0), samples=len(rows))


class CapacityController(Reducer):
    name = "autoscaler"
    accepts = frozenset({"scheduler.queue.sampled"})

    def __init__(self, settings: AutoscalerSettings) -> None:
        self.cfg = settings

    def _state(self, state: State) -> dict[str, Any]:
        return dict(state.get(_KEY) or {"start": 0, "end": 0, "samples": {}, "pos": None})

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if not isinstance(event, QueueSampled):
            return ()
        ctl = self._state(state)
        facts: list[Event] = []
        if ctl["samples"] and event.occurred_at >= ctl["end"]:
            facts.extend(self._close(ctl, event))
        facts.append(event.model_copy(update={"event_id": f"sample:{event.event_id}",
                                              "causation_id": event.event_id}))
        return facts

    def _close(self, ctl: dict[str, Any], cause: Event) -> list[Event]:
        m = _metrics(ctl["samples"])
        if ctl["pos"] is None:
            first = self.cfg.initial_replicas or m.node_count or 1
            pos = Position(replicas=max(self.cfg.min_replicas, min(self.cfg.max_replicas, first)))
        else:
            pos = Position(**ctl["pos"])
        end = ctl["end"]
        new, decision, scale_reason, mode_reason = step(pos, m, end, self.cfg)
        env = {"occurred_at": end, "causation_id": cause.event_id}
        window = CapacityWindowClosed(
            event_id=derive_event_id(f"window:{ctl['start']}", "closed"), **env,
            window_start=ctl["start"], window_end=end, samples=m.samples, queue_depth=m.queue,
            throttled=m.throttled, wait_p95_ms=m.wait_p95_ms, utilization=m.utilization,
            node_count=m.node_count, up_streak=new.up, down_streak=new.down,
            critical_streak=new.critical, open_streak=new.open, replicas=new.replicas,
            mode=new.mode,  # type: ignore[arg-type]
            previous_up_streak=pos.up, previous_down_streak=pos.down,
            previous_critical_streak=pos.critical, previous_open_streak=pos.open,
            previous_replicas=pos.replicas, previous_mode=pos.mode,  # type: ignore[arg-type]
            last_scale_up_at=new.last_up, last_scale_down_at=new.last_down,
            previous_last_scale_up_at=pos.last_up, previous_last_scale_down_at=pos.last_down,
            decision=decision,
        )
        out: list[Event] = [window]
        if new.replicas != pos.replicas:
            out.append(CapacityScaleRequested(
                event_id=derive_event_id(window.event_id, "scale"), **env,
                previous_replicas=pos.replicas, new_replicas=new.replicas,
                reason=scale_reason or "", queue_depth=m.queue, wait_p95_ms=m.wait_p95_ms,
                utilization=m.utilization, window_start=ctl["start"], window_end=end))
        if new.mode != pos.mode:
            out.append(CapacityAdmissionModeChanged(
                event_id=derive_event_id(window.event_id, "mode"), **env,
                previous_mode=pos.mode, new_mode=new.mode,  # type: ignore[arg-type]
                reason=mode_reason or "", queue_depth=m.queue, wait_p95_ms=m.wait_p95_ms,
                utilization=m.utilization, window_start=ctl["start"], window_end=end))
        return out

    def evolve(self, state: State, fact: Event) -> None:
        ctl = self._state(state)
        if isinstance(fact, CapacityWindowClosed):
            ctl.update(samples={}, start=0, end=0, pos={
                "up": fact.up_streak, "down": fact.down_streak,
                "critical": fact.critical_streak, "open": fact.open_streak,
                "replicas": fact.replicas, "mode": fact.mode,
                "last_up": fact.last_scale_up_at, "last_down": fact.last_scale_down_at})
        elif isinstance(fact, QueueSampled):
            if not ctl["samples"]:
                w = self.cfg.window_ms
                ctl.update(start=fact.occurred_at - fact.occurred_at % w,
                           end=fact.occurred_at - fact.occurred_at % w + w)
            ctl["samples"] = {**ctl["samples"], str(fact.partition): {
                "queue": fact.queue, "throttled": fact.throttled,
                "wait_p95_ms": fact.wait_p95_ms, "utilization": fact.utilization,
                "node_count": fact.node_count}}
        else:
            return
        state.set(_KEY, ctl)
