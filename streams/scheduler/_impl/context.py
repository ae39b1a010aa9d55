"""What every part of the scheduler's reducer shares: settings, the cluster view, topics.

The reducer is split by concern (admission and placement, claims and
settlement, clock and leases, dependencies, operator actions); each part is
a set of functions of this context, the partition's state and one event.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onceflow.schemas import Event, acts_for
from onceflow.streams.ids import caused_by
from onceflow.streams.limits import ScopeLimits, budgets_held, limiter_needed
from onceflow.streams.scheduler._impl.unit import (
    IndexKind,
    UnitRecord,
    index_key,
    unit_key,
)
from onceflow.streams.scheduler._impl.view import ClusterView
from onceflow.streams.scheduler.settings import SchedulerSettings
from onceflow.streams.topics.catalog import Topic, TopicCatalog
from onceflow.streams.types import CostEstimator, State

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["SchedulerContext"]

#: the largest 13-digit time: "no index entry at all"
_FAR_FUTURE = 10**13 - 1
#: how many converted records the context keeps at most (a batch's worth)
_RECORDS_KEPT = 4096


@dataclass
class SchedulerContext:
    cfg: SchedulerSettings
    view: ClusterView
    dispatch: Topic
    reports: Topic
    outcomes: Topic
    queue: Topic
    #: prices a unit for budget admission (billing's rule); None: no budgets
    estimator: CostEstimator | None
    #: which tenants have prepaid credit, and how much
    prepaid: dict[str, Any]
    #: concurrency limits per scope (none: no unit ever waits for a slot)
    limits: ScopeLimits
    limits_topic: Topic
    #: units are held against budgets (prepaid credit, session budgets) by the limiter
    budgets: bool
    #: units hold slots or budgets (a limit or a budget is set): completions give them back
    slots_counted: bool
    #: the provider LLM units call unless their `provider` parameter names another
    default_provider: str
    #: how long a settled unit is kept after its last decision (0: for ever)
    horizon_ms: int = 0
    #: which view version each partition's deferred units were last examined
    #: against; not state: it only saves work, the facts stay the same
    examined: dict[int, int] = field(default_factory=dict)
    #: and which control version each partition's paused units were (same idea)
    examined_controls: dict[int, int] = field(default_factory=dict)
    floors: _IndexFloors = field(default_factory=lambda: _IndexFloors())
    #: the unit of the submission just decided (by its admitted copy's event id),
    #: so evolving that copy neither hashes the payload nor converts it again
    admitted: tuple[str, UnitRecord | None] = ("", None)
    #: records by the identity of the state value they were read from or saved as
    #: (kept with the value, so the identity cannot be reused); not state: the
    #: RocksDB store hands back the value it was given until it checkpoints, so
    #: deciding and then evolving one unit converts it from JSON once
    records: dict[int, tuple[Any, UnitRecord]] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: StreamsSettings, view: ClusterView, catalog: TopicCatalog,
               estimator: CostEstimator | None) -> SchedulerContext:
        prepaid = dict(settings.prepaid_credits)
        budgets = budgets_held(settings)
        if budgets and estimator is None:
            raise ValueError("budgets (ONCEFLOW_BILLING__PREPAID_CREDITS, "
                             "ONCEFLOW_LIMITS__SESSION_BUDGETS) need a cost estimator: pass "
                             "billing's cost_estimator(settings.billing)")
        return cls(cfg=settings.scheduler, view=view, dispatch=catalog["dispatch"],
                   reports=catalog["reports"], outcomes=catalog["outcomes"],
                   queue=catalog["queue"], estimator=estimator, prepaid=prepaid,
                   limits=ScopeLimits.from_settings(settings.limits),
                   limits_topic=catalog["limits"], budgets=budgets,
                   slots_counted=limiter_needed(settings),
                   default_provider=settings.default_llm_provider,
                   horizon_ms=settings.retention_horizon_ms)

    @staticmethod
    def envelope(unit: UnitRecord, cause: Event, role: str, at: int) -> dict[str, Any]:
        """A fact about `unit` caused by `cause`; the unit is part of the role, since
        one tick decides for many units."""
        return caused_by(cause, f"{role}:{unit.work_unit_id}", occurred_at=at,
                         tenant_id=unit.tenant_id, execution_session_id=unit.session_id,
                         work_unit_id=unit.work_unit_id)

    # -- the unit table and its time indexes -------------------------------------------

    def load(self, state: State, work_unit_id: str) -> UnitRecord | None:
        raw = state.get(unit_key(work_unit_id))
        if raw is None:
            return None
        hit = self.records.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1]
        unit = UnitRecord.from_state(raw)
        self._remember(raw, unit)
        return unit

    def load_for(self, state: State, work_unit_id: str, acting_tenant: str
                 ) -> UnitRecord | None:
        """A unit as a control of `acting_tenant` sees it: another tenant's is absent."""
        unit = self.load(state, work_unit_id)
        return unit if unit is not None and acts_for(acting_tenant, unit.tenant_id) else None

    def _remember(self, raw: Any, unit: UnitRecord) -> None:
        if len(self.records) >= _RECORDS_KEPT:
            self.records.clear()
        self.records[id(raw)] = (raw, unit)

    def index_of(self, unit: UnitRecord) -> tuple[IndexKind, int] | None:
        """The time index a unit is in: its status's, or, once settled, the retire
        index at its last decision (when settled units are forgotten at all)."""
        entry = unit.index_entry()
        if entry is None and self.horizon_ms and unit.terminal:
            return ("settled", unit.decided_at)
        return entry

    def save(self, state: State, before: UnitRecord | None, unit: UnitRecord) -> None:
        """Store a unit and move its index entry to where its new status puts it."""
        old = None if before is None else self.index_of(before)
        new = self.index_of(unit)
        if old != new:
            wu = unit.work_unit_id
            if old is not None:
                state.delete(index_key(old[0], old[1], wu))
            if new is not None:
                # the entry holds the unit's submission time: what forgetting it needs
                state.set(index_key(new[0], new[1], wu), unit.submitted_at)
                self.floors.lower(state, new[0], new[1])
        raw = unit.to_state()
        self._remember(raw, unit)
        state.set(unit_key(unit.work_unit_id), raw)

    def due(self, state: State, kind: IndexKind, until: int | None,
            budget: int) -> list[tuple[str, int]]:
        """Up to `budget` index entries at or before `until` (None: all), oldest first,
        as (work unit, time)."""
        return [(wu, at) for wu, at, _ in self.due_entries(state, kind, until, budget)]

    def due_entries(self, state: State, kind: IndexKind, until: int | None,
                    budget: int) -> list[tuple[str, int, int]]:
        """As `due`, with each entry's submission time: (work unit, time, submitted at).

        The scan starts at the floor this process knows for the partition:
        entries that were due and handled leave tombstones in RocksDB, and
        walking past thousands of them on every tick is what made a scheduler
        with a long history slow.
        """
        prefix = f"x:{kind}:"
        stop = None if until is None else index_key(kind, until + 1, "")
        floor = self.floors.get(state, kind)
        start = None if floor is None else index_key(kind, floor, "")
        rows = []
        for key, submitted_at in state.items(prefix, stop=stop, start=start):
            _, _, at, wu = key.split(":", 3)
            rows.append((wu, int(at), submitted_at))
            if len(rows) > budget:
                break
        if len(rows) <= budget:
            # Everything live below `stop` is in `rows` and about to be handled;
            # what handling puts back lowers the floor again (see `save`).
            if until is not None:
                self.floors.set(state, kind, until + 1)
            else:
                self.floors.set(state, kind, rows[0][1] if rows else _FAR_FUTURE)
        return rows[:budget]


class _IndexFloors:
    """Per partition state and index kind: a time at or below every live index entry.

    A cache in this process, not state: unknown (scan from the start) for a
    state it has not scanned yet, so a restart or a reassignment is safe.
    """

    def __init__(self) -> None:
        self._by_state: weakref.WeakKeyDictionary[Any, dict[str, int]] = (
            weakref.WeakKeyDictionary())

    def get(self, state: State, kind: IndexKind) -> int | None:
        return self._by_state.get(state, {}).get(kind)

    def set(self, state: State, kind: IndexKind, at: int) -> None:
        self._by_state.setdefault(state, {})[kind] = at

    def lower(self, state: State, kind: IndexKind, at: int) -> None:
        floors = self._by_state.get(state)
        if floors is not None and kind in floors and at < floors[kind]:
            floors[kind] = at

