"""What the scheduler's facts say about progress: status per unit, latency, work per node.

A read model for `status`, the demo and the benchmarks, folded from the
work-unit topic. It is not the scheduler's state (that lives with the
scheduler); it is the same facts seen from outside.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from onceflow.schemas import Event, rejection_ends_unit

__all__ = ["PROGRESS_EVENT_TYPES", "SETTLED_STATES", "UnitProgress", "percentile"]

_STATUS_BY_TYPE: dict[str, str] = {
    "workunit.submitted": "submitted",
    "workunit.scheduled": "scheduled",
    "workunit.claim.granted": "running",
    "workunit.retry.scheduled": "retrying",
    "workunit.needs_operator": "needs_operator",
    "workunit.cancelled": "cancelled",
}

#: the facts that move a unit's state: a reader may skip the others undecoded
PROGRESS_EVENT_TYPES = frozenset(_STATUS_BY_TYPE) | frozenset({
    "workunit.deferred", "workunit.rejected", "workunit.failed", "workunit.completed"})

SETTLED_STATES = frozenset({"completed", "failed", "rejected", "cancelled", "needs_operator"})


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
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
        self.add_record(fact.event_type, fact.model_dump(), timestamp_ms)

    def add_record(self, event_type: str, r: dict[str, Any], timestamp_ms: int | None = None
                   ) -> None:
        """Fold one fact as a decoded Avro record (no model needed: the fast path)."""
        self.facts += 1
        wu = r.get("work_unit_id") or ""
        new = _STATUS_BY_TYPE.get(event_type)
        if event_type == "workunit.deferred":
            new = "waiting" if r["reason_code"] == "waiting_on_parents" else "deferred"
        elif event_type == "workunit.rejected":
            new = "rejected" if rejection_ends_unit(r["reason_code"], wu in self.status) \
                else None
        elif event_type == "workunit.failed":
            new = "failed" if r["final"] else None
        elif event_type == "workunit.completed":
            if r["accepted"]:
                new = "completed"
                self.accepted_completions[wu] += 1
                self.completed_by_node[r["selected_node_id"]] += 1
                if timestamp_ms is not None and r["submitted_at"]:
                    self.latency_ms[wu] = max(0, timestamp_ms - r["submitted_at"])
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
