"""Placement as a pure function: hard filters, scores, ranking, anti-affinity.

Everything a choice depends on is passed in and comes back out in the
decision record (`PlacementCandidate`s plus the streak), so a decision can
be re-checked later from its record alone with `rank_recorded`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from onceflow.schemas import BreakerState, PlacementCandidate, PlacementReason
from onceflow.streams.scheduler.settings import SchedulerSettings

__all__ = [
    "QUARANTINE_FALLBACK",
    "FilterReason",
    "NodeView",
    "Placement",
    "PlacementRequest",
    "Streak",
    "candidate_for",
    "place",
    "rank_recorded",
    "version_tuple",
]

#: the reason code of a release-1 placement on a quarantined node (quarantine is gone:
#: a node's breaker opens for a while instead); kept to re-check old records
QUARANTINE_FALLBACK: PlacementReason = "quarantine_fallback"

FilterReason = Literal[
    "disabled", "health_status", "breaker_open", "breaker_probing", "heartbeat_expired",
    "unsupported_kind", "insufficient_concurrency", "runtime_version",
]


@dataclass(frozen=True)
class NodeView:
    """A node as its latest heartbeat described it."""

    node_id: str
    enabled: bool = True
    health_status: str = "healthy"
    supported_kinds: tuple[str, ...] = ()
    available_concurrency: int = 0
    queue_depth: int = 0
    utilization: float = 0.0
    region: str | None = None
    version: str = "0.0.0"
    last_seen: int = 0
    #: the node's circuit breaker: open keeps work away; half-open lets a probe through
    breaker: BreakerState = "closed"
    #: half-open: whether the next probe is due (one per `breaker_probe_interval_ms`)
    probe_due: bool = True


@dataclass(frozen=True)
class PlacementRequest:
    kind: str
    region: str | None = None
    required_concurrency: int = 1
    min_runtime_version: str = "0.0.0"


@dataclass(frozen=True)
class Streak:
    """Which node won the last decisions in a row, and how many times."""

    node_id: str | None = None
    length: int = 0

    def after(self, winner: str) -> Streak:
        return Streak(winner, self.length + 1 if winner == self.node_id else 1)


@dataclass(frozen=True)
class Placement:
    selected: PlacementCandidate | None
    candidates: list[PlacementCandidate]
    eligible: int
    reason_code: PlacementReason | Literal["no_eligible_node"]
    filter_counts: dict[str, int] = field(default_factory=dict)


@functools.lru_cache(maxsize=1024)
def version_tuple(version: str) -> tuple[int, ...]:
    """`1.10.2` -> (1, 10, 2); non-numeric parts count as 0, so a typo never crashes placement."""
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _filter(node: NodeView, req: PlacementRequest, now: int,
            cfg: SchedulerSettings) -> FilterReason | None:
    # The order is Krako 2.0's, so the first failing rule names the reason; a
    # node that stopped heartbeating long ago (killed, partitioned) is out too,
    # or the units placed on it would only wait for their claim deadline.
    if not node.enabled:
        return "disabled"
    if node.health_status in ("down", "draining"):
        return "health_status"
    if node.breaker == "open":
        return "breaker_open"
    if node.breaker == "half_open" and not node.probe_due:
        return "breaker_probing"
    if now - node.last_seen > cfg.node_expiry_ms:
        return "heartbeat_expired"
    if req.kind not in node.supported_kinds:
        return "unsupported_kind"
    if node.available_concurrency < req.required_concurrency:
        return "insufficient_concurrency"
    if version_tuple(node.version) < version_tuple(req.min_runtime_version):
        return "runtime_version"
    return None


def _clamp(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


def _region_score(unit_region: str | None, node_region: str | None) -> float:
    if not unit_region:
        return 0.5
    return 1.0 if unit_region == node_region else 0.0


def candidate_for(
    *,
    node_id: str,
    available: int,
    queue_depth: int,
    utilization: float,
    raw_trust: float,
    heartbeat_age_ms: int,
    unit_region: str | None,
    node_region: str | None,
    cfg: SchedulerSettings,
) -> PlacementCandidate:
    """Score one node from raw inputs; the record keeps the inputs beside the score."""
    capacity = min(1.0, available / max(1, available + queue_depth))
    load = _clamp(1.0 - utilization)
    trust = raw_trust / 2 if heartbeat_age_ms > cfg.stale_heartbeat_ms else raw_trust
    region = _region_score(unit_region, node_region)
    score = (cfg.weight_capacity * capacity + cfg.weight_load * load
             + cfg.weight_trust * trust + cfg.weight_region * region)
    return PlacementCandidate(
        node_id=node_id, score=round(score, 6), capacity=round(capacity, 6),
        load=round(load, 6), trust=round(trust, 6), region=region, queue_depth=queue_depth,
        available_concurrency=available, utilization=utilization, raw_trust=raw_trust,
        heartbeat_age_ms=heartbeat_age_ms, node_region=node_region,
    )


def _choose(
    ranked: Sequence[PlacementCandidate], streak: Streak, cfg: SchedulerSettings
) -> tuple[PlacementCandidate, PlacementReason]:
    top = ranked[0]
    if (
        len(ranked) > 1
        and streak.node_id == top.node_id
        and streak.length > cfg.anti_affinity_streak
        and top.score - ranked[1].score <= cfg.anti_affinity_margin
    ):
        return ranked[1], "anti_affinity"
    return top, "best_score"


def _ranked(candidates: Iterable[PlacementCandidate]) -> list[PlacementCandidate]:
    return sorted(candidates, key=lambda c: (-c.score, c.queue_depth, c.node_id))


def place(
    req: PlacementRequest,
    nodes: Iterable[NodeView],
    trust: Mapping[str, float],
    now: int,
    streak: Streak,
    cfg: SchedulerSettings,
) -> Placement:
    """Choose a node for one unit, or say why none can take it.

    A node whose breaker is open gets nothing and a half-open one only its
    probe; when that leaves no node, the unit is deferred (and counted as
    queue, which is what asks the autoscaler for capacity). Breakers close
    or probe within `breaker_open_ms`, so no node stays out for long.
    """
    counts: dict[str, int] = {}
    eligible: list[PlacementCandidate] = []
    for node in sorted(nodes, key=lambda n: n.node_id):
        reason = _filter(node, req, now, cfg)
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
            continue
        eligible.append(candidate_for(
            node_id=node.node_id, available=node.available_concurrency,
            queue_depth=node.queue_depth, utilization=node.utilization,
            raw_trust=trust.get(node.node_id, cfg.default_trust),
            heartbeat_age_ms=max(0, now - node.last_seen), unit_region=req.region,
            node_region=node.region, cfg=cfg,
        ))
    if not eligible:
        return Placement(None, [], 0, "no_eligible_node", dict(sorted(counts.items())))
    ranked = _ranked(eligible)
    chosen, code = _choose(ranked, streak, cfg)
    return Placement(chosen, ranked, len(ranked), code, dict(sorted(counts.items())))


def rank_recorded(
    candidates: Sequence[PlacementCandidate],
    streak: Streak,
    unit_region: str | None,
    cfg: SchedulerSettings,
    *,
    recorded_reason: str | None = None,
) -> tuple[str, str]:
    """Re-run a recorded decision: rescore from the recorded raw inputs, rank, choose.

    Returns (node id, reason code); equal to what the record says when the
    decision was made by the rules in force now. A `quarantine_fallback`
    record's candidates are the quarantined nodes, ranked by the same rules.
    """
    rescored = [
        candidate_for(
            node_id=c.node_id, available=c.available_concurrency, queue_depth=c.queue_depth,
            utilization=c.utilization, raw_trust=c.raw_trust,
            heartbeat_age_ms=c.heartbeat_age_ms, unit_region=unit_region,
            node_region=c.node_region, cfg=cfg,
        )
        for c in candidates
    ]
    chosen, reason = _choose(_ranked(rescored), streak, cfg)
    return chosen.node_id, (QUARANTINE_FALLBACK if recorded_reason == QUARANTINE_FALLBACK
                            else reason)
