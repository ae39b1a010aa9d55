"""What the scheduler's facts say about progress: status per unit, latency, work per node.

A read model for `status`, the demo and the benchmarks, folded from the
work-unit topic. It is not the scheduler's state (that lives with the
scheduler); it is the same facts seen from outside.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from schemas import (
    ClaimGranted,
    Event,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitFailed,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
    WorkUnitSubmitted,
)

__all__ = ["SETTLED_STATES", "UnitProgress", "percentile"]

SETTLED_STATES = frozenset({"completed", "failed", "rejected", "cancelled", "needs_operator"})


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


@dataclass
class UnitProgress:
    status: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, int] = field(default_factory=dict)
    completed_by_node: Counter[str] = field(default_factory=Counter)
    accepted_completions: Counter[str] = field(default_factory=Counter)
    rejected_completions: int = 0
    facts: int = 0

    def add(self, fact: Event, timestamp_ms: int | None = None) -> None:
        """Fold one fact; `timestamp_ms` is the record's log time (for latency)."""
        self.facts += 1
        wu = fact.work_unit_id or ""
        new: str | None = None
        if isinstance(fact, WorkUnitSubmitted):
            new = "submitted"
        elif isinstance(fact, WorkUnitScheduled):
            new = "scheduled"
        elif isinstance(fact, WorkUnitDeferred):
            new = "waiting" if fact.reason_code == "waiting_on_parents" else "deferred"
        elif isinstance(fact, WorkUnitRejected):
            if fact.reason_code != "duplicate_id_different_payload":
                new = "rejected"
        elif isinstance(fact, ClaimGranted):
            new = "running"
        elif isinstance(fact, WorkUnitRetryScheduled):
            new = "retrying"
        elif isinstance(fact, WorkUnitNeedsOperator):
            new = "needs_operator"
        elif isinstance(fact, WorkUnitCancelled):
            new = "cancelled"
        elif isinstance(fact, WorkUnitFailed):
            if fact.final:
                new = "failed"
        elif isinstance(fact, WorkUnitCompleted):
            if fact.accepted:
                new = "completed"
                self.accepted_completions[wu] += 1
                self.completed_by_node[fact.selected_node_id] += 1
                if timestamp_ms is not None and fact.submitted_at:
                    self.latency_ms[wu] = max(0, timestamp_ms - fact.submitted_at)
            else:
                self.rejected_completions += 1
        if new is not None and wu:
            self.status[wu] = new

    def by_state(self) -> dict[str, int]:
        return dict(sorted(Counter(self.status.values()).items()))

    def settled(self) -> int:
        return sum(1 for s in self.status.values() if s in SETTLED_STATES)

    def latency_summary(self) -> dict[str, float]:
        values = [float(v) for v in self.latency_ms.values()]
        return {"count": len(values), "p50_ms": percentile(values, 50),
                "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99)}
