"""Watching the system from outside: unit progress from the facts, nodes from heartbeats."""

from __future__ import annotations

from collections import Counter
from typing import Any

from confluent_kafka import Message

from onceflow.schemas import (
    CapacityAdmissionModeChanged,
    CapacityScaleRequested,
    CapacityWindowClosed,
    CodecError,
    NodeHeartbeat,
    ProviderScopePaused,
    SingleObjectCodec,
    TrustScoreUpdated,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import TopicFollower, read_events, read_topic_to_end, type_fingerprints
from onceflow.streams.scheduler import UnitProgress
from onceflow.streams.topics.catalog import TopicCatalog

__all__ = ["ProgressFollower", "held_budgets", "node_rows", "read_capacity", "read_limiter",
           "read_limits", "read_nodes", "read_progress", "read_trust", "stack_report",
           "units_report"]


class ProgressFollower:
    """Keeps reading the work-unit topic and folding it into a `UnitProgress`."""

    def __init__(self, settings: OnceflowSettings, *, only: frozenset[str] | None = None
                 ) -> None:
        """`only`: fold just these event types (checked on the Avro fingerprint, undecoded)."""
        self.codec = SingleObjectCodec()
        self._wanted = None if only is None else type_fingerprints(self.codec, only)
        self.progress = UnitProgress()
        self._follower = TopicFollower(settings, [TopicCatalog(settings)["workunits"].name])

    def poll(self, timeout: float = 0.2, max_records: int = 100_000) -> int:
        """Fold what has arrived; return how many facts were read."""
        n = 0
        for msg in self._follower.read(timeout, max_records):
            n += 1
            self._fold(msg)
        return n

    def catch_up(self) -> None:
        """Fold everything the topic holds now (up to its high watermarks)."""
        for msg in self._follower.read_to_end():
            self._fold(msg)

    def _fold(self, msg: Message) -> None:
        raw = msg.value() or b""
        if self._wanted is not None and raw[2:10] not in self._wanted:
            return
        try:
            event_type, record = self.codec.decode_record(raw)
        except CodecError:
            return
        self.progress.add_record(event_type, record, msg.timestamp()[1])

    def close(self) -> None:
        self._follower.close()


def units_report(progress: UnitProgress) -> dict[str, Any]:
    """Units by state, per node completed, and refused completions: what `onceflow status`
    and the dashboard show of the units."""
    return {"by_state": progress.by_state(), "total": len(progress.status),
            "completed_by_node": dict(sorted(progress.completed_by_node.items())),
            "rejected_completions": progress.rejected_completions}


def stack_report(settings: OnceflowSettings, now_ms: int,
                 progress: UnitProgress | None = None) -> dict[str, Any]:
    """The running system as `onceflow status --format json` reports it: units, nodes with
    trust and heartbeat age, capacity, limits. `progress`: an already folded one (the
    dashboard keeps its own follower), else the work-unit topic is read from the start."""
    return {
        "units": units_report(progress if progress is not None else read_progress(settings)),
        "nodes": node_rows(read_nodes(settings), now_ms, read_trust(settings)),
        "capacity": read_capacity(settings),
        "limits": read_limits(settings, now_ms),
    }


def read_progress(settings: OnceflowSettings) -> UnitProgress:
    follower = ProgressFollower(settings)
    try:
        follower.catch_up()
        return follower.progress
    finally:
        follower.close()


def read_nodes(settings: OnceflowSettings) -> dict[str, NodeHeartbeat]:
    """The latest heartbeat of every node."""
    codec = SingleObjectCodec()
    latest: dict[str, NodeHeartbeat] = {}
    for msg in read_topic_to_end(settings, TopicCatalog(settings)["nodes"].name):
        try:
            event = codec.decode(msg.value() or b"")
        except CodecError:
            continue
        if isinstance(event, NodeHeartbeat):
            current = latest.get(event.node_id)
            if current is None or current.occurred_at <= event.occurred_at:
                latest[event.node_id] = event
    return dict(sorted(latest.items()))


def read_trust(settings: OnceflowSettings) -> dict[str, TrustScoreUpdated]:
    """The latest trust score of every node."""
    latest: dict[str, TrustScoreUpdated] = {}
    for _, event in read_events(settings, TopicCatalog(settings)["trust"].name,
                                SingleObjectCodec(),
                                event_types=frozenset({"trust.score.updated"})):
        assert isinstance(event, TrustScoreUpdated)
        latest[event.node_id] = event
    return latest


def read_limiter(settings: OnceflowSettings) -> tuple[Any, Any]:
    """The limiter (as configured here) and its state, folded from its facts (`flow`)."""
    from onceflow.streams.limits import Limiter
    from onceflow.streams.state import MemoryState

    catalog = TopicCatalog(settings)
    limiter = Limiter.from_settings(settings)
    state = MemoryState()
    for _, event in read_events(settings, catalog["flow"].name, SingleObjectCodec()):
        limiter.evolve(state, event)
    return limiter, state


def read_limits(settings: OnceflowSettings, now_ms: int) -> dict[str, Any]:
    """What holds work back right now: each limited scope's slots in use and waiting
    requests, rate windows, budget holds (the limiter's facts, folded), provider pauses,
    and breakers not closed."""
    catalog = TopicCatalog(settings)
    limiter, state = read_limiter(settings)
    limits = limiter.limits
    waiting = Counter(scope for _, scope in limiter.waiting_on(state))
    in_use = limiter.slots_in_use(state)
    scopes = sorted({*limits.per_scope, *in_use})
    slots = [{"scope": s, "in_use": in_use.get(s, 0), "limit": limits.limit_of(s),
              "waiting": waiting.get(s, 0)} for s in scopes]
    budgets = [{**b.as_json(), "waiting": waiting.get(f"budget:{b.scope}", 0)}
               for b in limiter.budgets(state)]
    pauses: dict[str, ProviderScopePaused] = {}
    for _, event in read_events(settings, catalog["workunits"].name, SingleObjectCodec(),
                                event_types=frozenset({"provider.scope.paused"})):
        assert isinstance(event, ProviderScopePaused)
        if event.paused_until > now_ms and (
                event.scope not in pauses or pauses[event.scope].paused_until < event.paused_until):
            pauses[event.scope] = event
    breakers = [{"node_id": t.node_id, "breaker": t.breaker, "until": t.breaker_until}
                for t in read_trust(settings).values() if t.breaker != "closed"]
    return {
        "limits": {"per_kind": limits.per_kind, "per_scope": limits.per_scope,
                   "requests_per_minute": limits.requests_per_minute,
                   "tokens_per_minute": limits.tokens_per_minute},
        "slots": slots, "waiting": sum(waiting.values()),
        "rates": limiter.rate_windows(state, now_ms),
        "budgets": budgets,
        "pauses": [{"scope": p.scope, "until": p.paused_until, "provider": p.provider,
                    "model": p.model, "remaining_ms": p.paused_until - now_ms}
                   for p in sorted(pauses.values(), key=lambda p: p.scope)],
        "breakers": breakers,
    }


def held_budgets(settings: OnceflowSettings) -> dict[str, Any]:
    """What the limiter holds for running work, by budget scope (tenant:<t>, session:<t>/<s>)."""
    limiter, state = read_limiter(settings)
    return {b.scope: b for b in limiter.budgets(state)}


def read_capacity(settings: OnceflowSettings) -> dict[str, Any]:
    """The autoscaler's latest view: replicas, admission mode, the last window's metrics."""
    out: dict[str, Any] = {"replicas": None, "mode": "OPEN", "window": None,
                           "scale_requests": [], "modes": []}
    for _, event in read_events(settings, TopicCatalog(settings)["capacity"].name,
                                SingleObjectCodec(), event_types=frozenset({
                                    "capacity.window.closed", "capacity.scale.requested",
                                    "capacity.admission.mode.changed"})):
        if isinstance(event, CapacityWindowClosed):
            out.update(replicas=event.replicas, mode=event.mode, window={
                "queue": event.queue_depth, "throttled": event.throttled,
                "wait_p95_ms": event.wait_p95_ms, "utilization": event.utilization,
                "decision": event.decision, "end": event.window_end})
        elif isinstance(event, CapacityScaleRequested):
            out["scale_requests"].append(f"{event.previous_replicas}->{event.new_replicas}")
        elif isinstance(event, CapacityAdmissionModeChanged):
            out["modes"].append(event.new_mode)
    return out


def node_rows(nodes: dict[str, NodeHeartbeat], now_ms: int,
              trust: dict[str, TrustScoreUpdated] | None = None) -> list[dict[str, Any]]:
    trust = trust or {}
    return [
        {"node_id": n.node_id, "health": n.health_status, "region": n.region,
         "kinds": n.supported_kinds, "concurrency": n.max_concurrency,
         "queue_depth": n.active_queue_depth, "utilization": n.utilization,
         "free_slots": n.available_concurrency, "version": n.version,
         "heartbeat_age_s": round(max(0, now_ms - n.occurred_at) / 1000, 1),
         "trust": trust[n.node_id].trust_score if n.node_id in trust else None,
         "breaker": trust[n.node_id].breaker if n.node_id in trust else "closed"}
        for n in nodes.values()
    ]
