"""The scheduler: admission, placement, claims, settlement and recovery.

Its logic is one pure reducer (`Scheduler`); `run_scheduler` runs it on the
batched shell with its clock. Placement is a pure function too, so a
decision can be re-checked from its record (`rank_recorded`).
"""

from onceflow.streams.scheduler._impl.placement import (
    NodeView,
    Placement,
    PlacementRequest,
    Streak,
    candidate_for,
    place,
    rank_recorded,
    version_tuple,
)
from onceflow.streams.scheduler._impl.progress import (
    PROGRESS_EVENT_TYPES,
    SETTLED_STATES,
    UnitProgress,
    percentile,
)
from onceflow.streams.scheduler._impl.reducer import Scheduler
from onceflow.streams.scheduler._impl.retry import retry_delay_ms
from onceflow.streams.scheduler._impl.unit import (
    TERMINAL,
    UnitRecord,
    UnitSpec,
    UnitStatus,
    unit_key,
)
from onceflow.streams.scheduler._impl.view import ClusterView
from onceflow.streams.scheduler.settings import SchedulerSettings

__all__ = [
    "PROGRESS_EVENT_TYPES",
    "SETTLED_STATES",
    "TERMINAL",
    "ClusterView",
    "NodeView",
    "Placement",
    "PlacementRequest",
    "Scheduler",
    "SchedulerSettings",
    "Streak",
    "UnitProgress",
    "UnitRecord",
    "UnitSpec",
    "UnitStatus",
    "candidate_for",
    "percentile",
    "place",
    "rank_recorded",
    "retry_delay_ms",
    "unit_key",
    "version_tuple",
]
