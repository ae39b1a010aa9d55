"""Sessions as the log tells them: each session's steps, their DAG and states, its cost and
its lifecycle, folded from the scheduler's facts and the ledger's line items.

A read model, not a processor: `onceflow sessions` and `onceflow session show`
fold the topics from the start (`at` stops at a point in logged time), so what
they show is what the log says, and the same on every read.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from onceflow.schemas import (
    CONTROL_NOT_TAKEN,
    ClaimGranted,
    ControlApplied,
    Event,
    LedgerLineItem,
    Scope,
    SessionLimitCrossed,
    SessionLimitsChanged,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitFailed,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
    WorkUnitSubmitted,
    rejection_ends_unit,
)
from onceflow.streams.scheduler import PROGRESS_EVENT_TYPES

__all__ = ["SESSION_ENDED", "STEP_ENDED", "SessionState", "SessionView", "Step",
           "advance_step", "applies_to", "apply_session_fact", "fold_sessions", "read_log",
           "session_of_fact", "session_state", "waits_for_a_person"]

SessionState = Literal["running", "paused", "waiting", "cancelling", "cancelled", "completed",
                       "failed"]

#: the states a step ends in
STEP_ENDED = frozenset({"completed", "failed", "rejected", "cancelled"})
_DONE = STEP_ENDED
#: the states a session ends in
SESSION_ENDED: frozenset[SessionState] = frozenset({"completed", "failed", "cancelled"})
#: a step in one of these waits for a person (a session with one is `waiting`)
_PERSON_REASONS = ("awaiting_approval", "awaiting_input")


def waits_for_a_person(state: str, reason: str) -> bool:
    return state == "waiting" and reason in _PERSON_REASONS


def session_state(counts: Mapping[str, int], people_waiting: int, paused: bool,
                  cancelled_by: str) -> SessionState:
    """A session's state from its steps' states (how many in each), how many of them wait
    for a person, and its controls: the one rule the fold and the read model share."""
    total = sum(counts.values())
    open_steps = {s: n for s, n in counts.items() if n and s not in _DONE}
    if cancelled_by:
        return "cancelling" if open_steps.get("running") else "cancelled"
    if not open_steps:
        if total and counts.get("completed", 0) == total:
            return "completed"
        return "cancelled" if total and counts.get("cancelled", 0) == total else "failed"
    if paused:
        return "paused"
    return "waiting" if people_waiting else "running"


@dataclass
class Step:
    """One unit of a session, as far as the log has got."""

    work_unit_id: str
    kind: str
    depends_on: list[str]
    submitted_at: int
    state: str = "submitted"
    reason: str = ""
    attempts: int = 0
    node: str = ""
    finished_at: int = 0
    cost_usd: Decimal = Decimal("0")
    #: its accepted result's address in the content store
    result: dict[str, Any] | None = None

    def to_row(self) -> dict[str, Any]:
        """As the read model stores it (JSON-shaped; `from_row` reads it back)."""
        return {"work_unit_id": self.work_unit_id, "kind": self.kind,
                "depends_on": self.depends_on, "submitted_at": self.submitted_at,
                "state": self.state, "reason": self.reason, "attempts": self.attempts,
                "node": self.node, "finished_at": self.finished_at,
                "cost_usd": f"{self.cost_usd:f}", "result": self.result}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Step:
        return cls(row["work_unit_id"], row["kind"], list(row["depends_on"]),
                   row["submitted_at"], row["state"], row["reason"], row["attempts"],
                   row["node"], row["finished_at"], Decimal(row["cost_usd"]), row["result"])

    def as_json(self) -> dict[str, Any]:
        return {"work_unit_id": self.work_unit_id, "kind": self.kind,
                "depends_on": self.depends_on, "state": self.state, "reason": self.reason,
                "attempts": self.attempts, "node": self.node,
                "cost_usd": f"{self.cost_usd:f}", "result_ref": self.result,
                "time_ms": (self.finished_at - self.submitted_at) if self.finished_at else None}


@dataclass
class SessionView:
    tenant_id: str
    session_id: str
    steps: dict[str, Step] = field(default_factory=dict)
    paused: bool = False
    cancelled_by: str = ""
    started_at: int = 0
    last_at: int = 0
    #: its execution limits (the first submission's, or the last an operator set)
    limits: dict[str, Any] = field(default_factory=dict)
    #: the limit it is parked or was cancelled at, and the warnings it had ('' / none)
    at_limit: str = ""
    warnings: list[str] = field(default_factory=list)
    #: which cancel `cancelled_by` is from (logged time and control id): the first one
    cancel_mark: str = ""

    @property
    def cost_usd(self) -> Decimal:
        return sum((s.cost_usd for s in self.steps.values()), Decimal("0"))

    @property
    def state(self) -> SessionState:
        return session_state(Counter(s.state for s in self.steps.values()),
                             sum(1 for s in self.steps.values()
                                 if waits_for_a_person(s.state, s.reason)),
                             self.paused, self.cancelled_by)

    def as_json(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "session_id": self.session_id,
                "state": self.state, "steps": len(self.steps),
                "done": sum(1 for s in self.steps.values() if s.state in _DONE),
                "cost_usd": f"{self.cost_usd:f}", "started_at": self.started_at,
                "last_at": self.last_at, "paused": self.paused,
                "cancelled_by": self.cancelled_by, "limits": self.limits,
                "at_limit": self.at_limit, "warnings": self.warnings}


def fold_sessions(facts: Iterable[Event], line_items: Iterable[LedgerLineItem] = (),
                  *, at: int | None = None) -> dict[tuple[str, str], SessionView]:
    """Every session in the scheduler's facts (and its billed cost), as the log held them
    at logged time `at`: the replay that the read model's answers are checked against."""
    sessions: dict[tuple[str, str], SessionView] = {}
    #: each unit's session, from its submission (later facts are read by unit)
    session_of: dict[str, SessionView] = {}

    #: each unit's clock: the latest logged time among the facts that moved it so far
    stamp_of: dict[str, int] = {}
    for e in facts:
        wu = e.work_unit_id or ""
        if e.event_type in PROGRESS_EVENT_TYPES and wu:
            # A unit's facts can be stamped out of order (a node's clock, a jump): the
            # log cut at `at` is each unit's facts up to the first stamped after it, a
            # state the unit was in, never a mix of earlier and later ones.
            stamp_of[wu] = stamp = max(stamp_of.get(wu, 0), e.occurred_at)
            if at is not None and stamp > at:
                continue
        elif at is not None and e.occurred_at > at:
            continue
        if isinstance(e, ControlApplied | SessionLimitCrossed | SessionLimitsChanged):
            key = session_of_fact(e)
            if key is not None and key in sessions and applies_to(sessions[key], e):
                apply_session_fact(sessions[key], e)
            continue
        if isinstance(e, WorkUnitSubmitted):
            key = (e.tenant_id, e.execution_session_id)
            view = sessions.get(key)
            if view is None:
                view = sessions[key] = SessionView(*key, started_at=e.occurred_at)
            view.started_at = min(view.started_at, e.occurred_at)
            view.steps.setdefault(wu, Step(wu, e.kind, list(e.depends_on), e.occurred_at))
            if e.session_limits is not None and not view.limits:
                view.limits = e.session_limits.model_dump(mode="json", exclude_none=True)
            session_of.setdefault(wu, view)
            continue
        owner = session_of.get(wu)
        if owner is None:
            continue
        owner.last_at = max(owner.last_at, e.occurred_at)
        advance_step(owner.steps[wu], e)
    for item in line_items:
        if at is not None and item.occurred_at > at:
            continue
        owner = session_of.get(item.work_unit_id or "")
        if owner is not None and item.billed:
            owner.steps[item.work_unit_id or ""].cost_usd += item.total_usd
    return sessions


def advance_step(step: Step, e: Event) -> None:
    """One fact's effect on a unit's step: the rule every reader of steps folds with."""
    if isinstance(e, WorkUnitScheduled):
        step.state, step.reason = "scheduled", ""
        step.attempts, step.node = e.attempt_index, e.selected_node_id
    elif isinstance(e, ClaimGranted):
        step.state = "running"
    elif isinstance(e, WorkUnitDeferred):
        step.state = "waiting" if e.reason_code in ("waiting_on_parents", "awaiting_approval",
                                                    "awaiting_input") else "deferred"
        step.reason = e.reason_code
    elif isinstance(e, WorkUnitCompleted) and e.accepted:
        step.state, step.finished_at = "completed", e.occurred_at
        step.result = e.result_ref.model_dump() if e.result_ref else None
    elif isinstance(e, WorkUnitFailed):
        step.state, step.reason, step.finished_at = "failed", e.error_code, e.occurred_at
    elif isinstance(e, WorkUnitRetryScheduled):
        step.state, step.reason = "retry_wait", e.reason_code
    elif isinstance(e, WorkUnitNeedsOperator):
        step.state, step.reason = "needs_operator", e.reason_code
    elif isinstance(e, WorkUnitCancelled):
        step.state, step.reason, step.finished_at = "cancelled", e.reason, e.occurred_at
    elif isinstance(e, WorkUnitRejected) and rejection_ends_unit(e.reason_code, True):
        step.state, step.reason, step.finished_at = "rejected", e.reason_code, e.occurred_at


def session_of_fact(e: Event) -> tuple[str, str] | None:
    """The session a session-level fact is about (a control taken on a session, the
    limiter's word on its limits); None for any other fact."""
    if isinstance(e, ControlApplied):
        if e.scope != "session" or e.outcome in CONTROL_NOT_TAKEN:
            return None
        target = Scope.parse(e.target)
        return target.tenant, target.name
    if isinstance(e, SessionLimitCrossed | SessionLimitsChanged):
        return e.tenant_id, e.execution_session_id
    return None


def applies_to(view: SessionView, e: Event) -> bool:
    """Whether a session-level fact is about this session: a control taken before its first
    submission was about no step of it (the limiter's word on its limits always is)."""
    return not isinstance(e, ControlApplied) or e.occurred_at >= view.started_at


def apply_session_fact(view: SessionView, e: Event) -> None:
    """A session's pause, resume or cancel (the partitions' records of one control agree),
    or the limiter's word on its limits: a warning, the limit reached, new limits."""
    if isinstance(e, ControlApplied):
        if e.action == "pause":
            view.paused = True
        elif e.action == "resume":
            view.paused = False
        elif e.action == "cancel" and e.outcome == "applied":
            # a partition that had none of its units to cancel says `none_here`: a cancel
            # made before the session began, or after it ended, cancelled nothing.
            # The first to cancel it, in logged time (its records on several partitions
            # come in no set order, and once cancelled is for good)
            mark = f"{e.occurred_at:015d}/{e.control_id}"
            if not view.cancel_mark or mark < view.cancel_mark:
                view.cancelled_by, view.cancel_mark = e.requested_by, mark
    elif isinstance(e, SessionLimitsChanged):
        view.limits = e.session_limits.model_dump(mode="json", exclude_none=True)
        if e.resumed:
            view.at_limit = ""
    elif isinstance(e, SessionLimitCrossed):
        if e.threshold == "reached":
            view.at_limit = e.detail
        else:  # kept sorted: a session's warnings come from more than one partition
            bisect.insort(view.warnings, e.detail)


def read_log(settings: Any, ledger: bool = True) -> tuple[list[Event], list[LedgerLineItem]]:
    """What the session views fold: the scheduler's facts, then the limiter's word on
    sessions' limits (a view is a fold, and these only set its limits and what it
    reached), and the ledger's line items (`ledger`)."""
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    catalog = TopicCatalog(settings)
    codec = SingleObjectCodec()
    facts = [e for _, e in read_events(settings, catalog["workunits"].name, codec)]
    facts += [e for _, e in read_events(
        settings, catalog["flow"].name, codec,
        event_types=frozenset({"flow.session.limit", "flow.session.limits.changed"}))]
    items = [] if not ledger else [
        e for _, e in read_events(settings, catalog["ledger"].name, codec,
                                  event_types=frozenset({"ledger.line_item"}))
        if isinstance(e, LedgerLineItem)]
    return facts, items
