"""Sessions as the log tells them: each session's steps, their DAG and states, its cost and
its lifecycle, folded from the scheduler's facts and the ledger's line items.

A read model, not a processor: `onceflow sessions` and `onceflow session show`
fold the topics from the start (`at` stops at a point in logged time), so what
they show is what the log says, and the same on every read.
"""

from __future__ import annotations

from collections.abc import Iterable
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

__all__ = ["SESSION_ENDED", "SessionState", "SessionView", "Step", "fold_sessions", "read_log"]

SessionState = Literal["running", "paused", "waiting", "cancelling", "cancelled", "completed",
                       "failed"]

_DONE = frozenset({"completed", "failed", "rejected", "cancelled"})
#: the states a session ends in
SESSION_ENDED: frozenset[SessionState] = frozenset({"completed", "failed", "cancelled"})


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

    @property
    def cost_usd(self) -> Decimal:
        return sum((s.cost_usd for s in self.steps.values()), Decimal("0"))

    @property
    def state(self) -> SessionState:
        states = [s.state for s in self.steps.values()]
        open_steps = [s for s in states if s not in _DONE]
        if self.cancelled_by:
            return "cancelling" if "running" in open_steps else "cancelled"
        if not open_steps:
            if states and all(s == "completed" for s in states):
                return "completed"
            return "cancelled" if states and all(s == "cancelled" for s in states) else "failed"
        if self.paused:
            return "paused"
        if any(s.state == "waiting" and s.reason in ("awaiting_approval", "awaiting_input")
               for s in self.steps.values()):
            return "waiting"
        return "running"

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
    """Every session in the scheduler's facts (and its billed cost), up to logged time `at`."""
    sessions: dict[tuple[str, str], SessionView] = {}
    #: each unit's session, from its submission (later facts are read by unit)
    session_of: dict[str, SessionView] = {}

    for e in facts:
        if at is not None and e.occurred_at > at:
            continue
        if isinstance(e, ControlApplied):
            _control(sessions, e)
            continue
        if isinstance(e, SessionLimitCrossed | SessionLimitsChanged):
            _limit(sessions, e)
            continue
        wu = e.work_unit_id or ""
        if isinstance(e, WorkUnitSubmitted):
            key = (e.tenant_id, e.execution_session_id)
            view = sessions.get(key)
            if view is None:
                view = sessions[key] = SessionView(*key, started_at=e.occurred_at)
            view.steps.setdefault(wu, Step(wu, e.kind, list(e.depends_on), e.occurred_at))
            if e.session_limits is not None and not view.limits:
                view.limits = e.session_limits.model_dump(mode="json", exclude_none=True)
            session_of.setdefault(wu, view)
            continue
        owner = session_of.get(wu)
        if owner is None:
            continue
        owner.last_at = max(owner.last_at, e.occurred_at)
        _advance(owner.steps[wu], e)
    for item in line_items:
        if at is not None and item.occurred_at > at:
            continue
        owner = session_of.get(item.work_unit_id or "")
        if owner is not None and item.billed:
            owner.steps[item.work_unit_id or ""].cost_usd += item.total_usd
    return sessions


def _advance(step: Step, e: Event) -> None:
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


def _control(sessions: dict[tuple[str, str], SessionView], e: ControlApplied) -> None:
    """A session's pause, resume or cancel (the partitions' records of one control agree)."""
    if e.scope != "session" or e.outcome in CONTROL_NOT_TAKEN:
        return
    target = Scope.parse(e.target)
    view = sessions.get((target.tenant, target.name))
    if view is None:
        return
    if e.action == "pause":
        view.paused = True
    elif e.action == "resume":
        view.paused = False
    elif e.action == "cancel":
        view.cancelled_by = e.requested_by


def _limit(sessions: dict[tuple[str, str], SessionView],
           e: SessionLimitCrossed | SessionLimitsChanged) -> None:
    """The limiter's word on a session's limits: a warning, the limit reached, new limits."""
    view = sessions.get((e.tenant_id, e.execution_session_id))
    if view is None:
        return
    if isinstance(e, SessionLimitsChanged):
        view.limits = e.session_limits.model_dump(mode="json", exclude_none=True)
        if e.resumed:
            view.at_limit = ""
    elif e.threshold == "reached":
        view.at_limit = e.detail
    else:
        view.warnings.append(e.detail)


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
