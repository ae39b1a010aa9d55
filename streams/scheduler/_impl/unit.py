"""The scheduler's typed state: one record per work unit, and the partition's small tables.

State stores JSON (canonical, so two replays compare byte for byte); these
records are what the reducer works with, converted at the state boundary
by `to_state` / `from_state` and nowhere else.

States of a unit::

    waiting ─┐                      ┌─> completed
    deferred ┼─> scheduled ─> granted ┼─> retry_wait ─> scheduled ...
    retry_wait┘     │ claim timeout   ├─> retry_pending ─> retry_wait (the limiter granted
                    │                 │                └─> failed    the tenant a retry, or not)
                    │                 ├─> needs_operator ─> (operator)
                    └─> scheduled (next attempt, elsewhere)  └─> failed
    rejected, cancelled: terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from onceflow.schemas import (
    ContentRef,
    EffectLabel,
    IdempotencyClass,
    Priority,
    SessionFailurePolicy,
    SessionLimits,
    WorkKind,
    WorkUnitSubmitted,
)
from onceflow.streams.types import State

__all__ = [
    "QUEUE_KEY",
    "TERMINAL",
    "WAITING_FOR_A_PERSON",
    "ClaimWaits",
    "IndexKind",
    "PlacementMemory",
    "QueueBucket",
    "QueueCounters",
    "UnitRecord",
    "UnitSpec",
    "UnitStatus",
    "deps_key",
    "forget_orphan",
    "index_key",
    "orphan_key",
    "probed_prefix",
    "unit_key",
]

UnitStatus = Literal[
    "submitted", "waiting", "deferred", "waiting_for_slot", "scheduled", "granted",
    "retry_wait", "retry_pending", "needs_operator", "completed", "failed", "rejected",
    "cancelled",
]
TERMINAL: frozenset[UnitStatus] = frozenset({"completed", "failed", "rejected", "cancelled"})

#: The time-ordered indexes a tick reads: lease deadlines (claims and running
#: attempts), due retries, deferred units in submission order, and settled
#: units by their last decision (forgotten once past the retention horizon).
IndexKind = Literal["lease", "retry", "deferred", "paused", "orphan", "settled"]

QueueBucket = Literal["deferred", "throttled", "scheduled", "retry_wait", "granted"]

#: why a unit can wait for a person, each until a deadline
WAITING_FOR_A_PERSON = frozenset({"awaiting_approval", "awaiting_input"})

QUEUE_KEY = "queue"
WAITS_KEY = "queue-waits"
PLACEMENT_KEY = "placement"
_MAX_WAITS = 512


def unit_key(work_unit_id: str) -> str:
    return f"u:{work_unit_id}"


def deps_key(parent_id: str) -> str:
    """Where a parent's waiting children are listed."""
    return f"deps:{parent_id}"


def orphan_key(parent_id: str) -> str:
    """A parent children wait on that nobody submitted yet: when they stop waiting."""
    return f"o:{parent_id}"


def probed_prefix(unit: str) -> str:
    """Where the cycle searches that came through a unit are remembered."""
    return f"pr:{unit}:"


def forget_orphan(state: State, parent_id: str) -> None:
    """The parent came (or its children were told it never did): no deadline is kept."""
    at = state.get(orphan_key(parent_id))
    if at is not None:
        state.delete(orphan_key(parent_id))
        state.delete(index_key("orphan", at, parent_id))


def index_key(kind: IndexKind, at: int, work_unit_id: str) -> str:
    # Zero-padded times sort as numbers, so a tick reads only what is due.
    return f"x:{kind}:{at:013d}:{work_unit_id}"


def _ref_in(value: dict[str, Any] | None) -> ContentRef | None:
    return None if value is None else ContentRef.model_validate(value)


def _ref_out(ref: ContentRef | None) -> dict[str, Any] | None:
    return None if ref is None else ref.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What the submission asked for: fixed for the unit's life."""

    kind: WorkKind
    priority: Priority
    region: str | None
    required_concurrency: int
    min_runtime_version: str
    effect: EffectLabel
    idempotency_class: IdempotencyClass
    max_attempts: int
    lease_ms: int
    depends_on: tuple[str, ...]
    handler: str | None
    simulated_ms: int
    prompt: str | None
    model: str | None
    llm_tokens: int
    correlation_id: str | None
    input_ref: ContentRef | None
    parameters: dict[str, str]
    #: the most its session may be charged, as the submission set it (None: no session budget)
    session_budget_usd: Decimal | None = None
    #: a person approves it before it runs, within this long (0: the scheduler's default)
    requires_approval: bool = False
    approval_timeout_ms: int = 0
    #: its session's execution limits, as the submission set them (None: none)
    session_limits: SessionLimits | None = None
    #: what its failure does to its session
    failure_policy: SessionFailurePolicy = "continue"
    #: the spec as state holds it: a spec never changes, so it is converted once
    stored: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, event: WorkUnitSubmitted) -> UnitSpec:
        spec = cls._of(event)
        return replace(spec, stored=spec.to_state())

    @classmethod
    def _of(cls, event: WorkUnitSubmitted) -> UnitSpec:
        return cls(
            kind=event.kind, priority=event.priority, region=event.region,
            required_concurrency=event.required_concurrency,
            min_runtime_version=event.min_runtime_version, effect=event.effect,
            idempotency_class=event.idempotency_class, max_attempts=event.max_attempts,
            lease_ms=event.lease_ms, depends_on=tuple(event.depends_on), handler=event.handler,
            simulated_ms=event.simulated_ms, prompt=event.prompt, model=event.model,
            llm_tokens=event.llm_tokens, correlation_id=event.correlation_id,
            input_ref=event.input_ref, parameters=dict(event.parameters),
            session_budget_usd=event.session_budget_usd,
            requires_approval=event.requires_approval,
            approval_timeout_ms=event.approval_timeout_ms,
            session_limits=event.session_limits, failure_policy=event.failure_policy,
        )

    @property
    def session_budget(self) -> Decimal | None:
        """The most its session may be charged: its budget, or its limits' max_cost_usd."""
        if self.session_budget_usd is not None:
            return self.session_budget_usd
        return None if self.session_limits is None else self.session_limits.max_cost_usd

    def shape(self) -> tuple[Any, ...]:
        """What placement looks at: units of one shape fit the same nodes."""
        return (self.kind, self.region, self.required_concurrency, self.min_runtime_version)

    def to_state(self) -> dict[str, Any]:
        if self.stored is not None:
            return self.stored
        d: dict[str, Any] = {
            "kind": self.kind, "priority": self.priority, "region": self.region,
            "required_concurrency": self.required_concurrency,
            "min_runtime_version": self.min_runtime_version, "effect": self.effect,
            "idempotency_class": self.idempotency_class, "max_attempts": self.max_attempts,
            "lease_ms": self.lease_ms, "depends_on": list(self.depends_on),
            "handler": self.handler, "simulated_ms": self.simulated_ms, "prompt": self.prompt,
            "model": self.model, "llm_tokens": self.llm_tokens,
            "correlation_id": self.correlation_id, "input_ref": _ref_out(self.input_ref),
            "parameters": self.parameters,
        }
        if self.session_budget_usd is not None:
            d["session_budget_usd"] = f"{self.session_budget_usd:f}"
        if self.requires_approval:
            d["requires_approval"] = True
            d["approval_timeout_ms"] = self.approval_timeout_ms
        if self.session_limits is not None:
            d["session_limits"] = self.session_limits.model_dump(mode="json",
                                                                 exclude_defaults=True)
        if self.failure_policy != "continue":
            d["failure_policy"] = self.failure_policy
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> UnitSpec:
        return cls(
            kind=d["kind"], priority=d["priority"], region=d["region"],
            required_concurrency=d["required_concurrency"],
            min_runtime_version=d["min_runtime_version"], effect=d["effect"],
            idempotency_class=d["idempotency_class"], max_attempts=d["max_attempts"],
            lease_ms=d["lease_ms"], depends_on=tuple(d["depends_on"]), handler=d["handler"],
            simulated_ms=d["simulated_ms"], prompt=d["prompt"], model=d["model"],
            llm_tokens=d["llm_tokens"], correlation_id=d["correlation_id"],
            input_ref=_ref_in(d["input_ref"]), parameters=d["parameters"],
            session_budget_usd=(None if d.get("session_budget_usd") is None
                                else Decimal(d["session_budget_usd"])),
            requires_approval=d.get("requires_approval", False),
            approval_timeout_ms=d.get("approval_timeout_ms", 0),
            session_limits=(None if d.get("session_limits") is None
                            else SessionLimits.model_validate(d["session_limits"])),
            failure_policy=d.get("failure_policy", "continue"),
            stored=d,
        )


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """One work unit as the scheduler knows it: its spec and where its state machine is."""

    work_unit_id: str
    tenant_id: str
    session_id: str
    #: the submission's payload digest: a resend with another payload is rejected
    digest: str
    spec: UnitSpec
    submitted_at: int
    status: UnitStatus = "submitted"
    #: the reason code (or error code) of the fact that last moved the unit
    reason: str = ""
    #: the current attempt (0 before the first placement)
    attempt: int = 0
    node: str = ""
    incarnation: str = ""
    #: the `workunit.scheduled` fact of the current attempt
    dispatch_event_id: str = ""
    failures: int = 0
    staged: bool = False
    #: when the claim window (scheduled) or the lease (granted) runs out
    deadline: int = 0
    retry_at: int = 0
    decided_at: int = 0
    #: each parent's result, once it has completed
    parents: dict[str, ContentRef | None] = field(default_factory=dict)
    result_ref: ContentRef | None = None
    #: holds its concurrency slots (granted by the limiter, not yet given back)
    slots: bool = False
    #: a person approved it (only units that require an approval wait for one)
    approved: bool = False

    @classmethod
    def submitted(cls, event: WorkUnitSubmitted, digest: str) -> UnitRecord:
        return cls(
            work_unit_id=event.work_unit_id or "", tenant_id=event.tenant_id,
            session_id=event.execution_session_id, digest=digest, spec=UnitSpec.of(event),
            submitted_at=event.occurred_at, decided_at=event.occurred_at,
        )

    def but(self, **changes: Any) -> UnitRecord:
        """A copy with `changes`: records are immutable, state is set anew.

        Spelled out rather than `dataclasses.replace` (which validates the
        names and re-runs `__init__` by keyword): this runs for every fact the
        scheduler folds. A test checks it covers every field.
        """
        get = changes.get
        return UnitRecord(
            get("work_unit_id", self.work_unit_id), get("tenant_id", self.tenant_id),
            get("session_id", self.session_id), get("digest", self.digest),
            get("spec", self.spec), get("submitted_at", self.submitted_at),
            get("status", self.status), get("reason", self.reason), get("attempt", self.attempt),
            get("node", self.node), get("incarnation", self.incarnation),
            get("dispatch_event_id", self.dispatch_event_id), get("failures", self.failures),
            get("staged", self.staged), get("deadline", self.deadline),
            get("retry_at", self.retry_at), get("decided_at", self.decided_at),
            get("parents", self.parents), get("result_ref", self.result_ref),
            get("slots", self.slots), get("approved", self.approved),
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def parents_done(self) -> bool:
        return set(self.parents) >= set(self.spec.depends_on)

    def index_entry(self) -> tuple[IndexKind, int] | None:
        """Which time index the unit belongs in now, and at what time (None: none).

        Derived from the status, so the index can never disagree with it.
        """
        if self.status in ("scheduled", "granted"):
            return ("lease", self.deadline)
        if self.status == "retry_wait":
            return ("retry", self.retry_at)
        if self.status == "waiting" and self.reason in WAITING_FOR_A_PERSON:
            return ("retry", self.retry_at)  # its deadline: then it fails closed
        if self.status == "deferred":
            if self.reason in ("provider_paused", "rate_limited"):
                return ("retry", self.retry_at)  # due again when the pause ends, or its turn
            if self.reason == "paused":
                return ("paused", self.decided_at)  # looked at again after a resume
            return ("deferred", self.submitted_at)
        return None

    def queue_bucket(self) -> QueueBucket | None:
        if self.status == "deferred":
            # Held back on purpose, not for want of nodes: not queue the autoscaler scales for.
            held = self.reason in ("throttled", "provider_paused", "rate_limited", "paused")
            return "throttled" if held else "deferred"
        if self.status == "waiting_for_slot":
            return "throttled"  # held back by a limit: more nodes would not help
        if self.status == "retry_pending":
            return "retry_wait"  # its retry waits for the tenant's budget, then its backoff
        if self.status in ("scheduled", "retry_wait", "granted"):
            return self.status
        return None

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.work_unit_id, "tenant": self.tenant_id, "session": self.session_id,
            "digest": self.digest, "spec": self.spec.to_state(),
            "submitted_at": self.submitted_at, "status": self.status, "reason": self.reason,
            "attempt": self.attempt, "node": self.node, "incarnation": self.incarnation,
            "dispatch": self.dispatch_event_id, "failures": self.failures,
            "staged": self.staged, "deadline": self.deadline, "retry_at": self.retry_at,
            "decided_at": self.decided_at,
            "parents": {p: _ref_out(r) for p, r in sorted(self.parents.items())},
            "result_ref": _ref_out(self.result_ref), "slots": self.slots,
            **({"approved": True} if self.approved else {}),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> UnitRecord:
        return cls(
            work_unit_id=d["id"], tenant_id=d["tenant"], session_id=d["session"],
            digest=d["digest"], spec=UnitSpec.from_state(d["spec"]),
            submitted_at=d["submitted_at"], status=d["status"], reason=d["reason"],
            attempt=d["attempt"], node=d["node"], incarnation=d["incarnation"],
            dispatch_event_id=d["dispatch"], failures=d["failures"], staged=d["staged"],
            deadline=d["deadline"], retry_at=d["retry_at"], decided_at=d["decided_at"],
            parents={p: _ref_in(r) for p, r in d["parents"].items()},
            result_ref=_ref_in(d["result_ref"]), slots=d["slots"],
            approved=d.get("approved", False),
        )

    @classmethod
    def load(cls, state: State, work_unit_id: str) -> UnitRecord | None:
        value = state.get(unit_key(work_unit_id))
        return None if value is None else cls.from_state(value)


@dataclass(frozen=True, slots=True)
class PlacementMemory:
    """The partition's anti-affinity streak and the last scheduling epoch it used."""

    node: str | None = None
    streak: int = 0
    epoch: int = 0

    @classmethod
    def load(cls, state: State) -> PlacementMemory:
        d = state.get(PLACEMENT_KEY)
        return cls() if d is None else cls(d["node"], d["streak"], d["epoch"])

    def save(self, state: State) -> None:
        state.set(PLACEMENT_KEY, {"node": self.node, "streak": self.streak, "epoch": self.epoch})


@dataclass(slots=True)
class QueueCounters:
    """The partition's queue by bucket, and when it was last sampled.

    Mutable, unlike the unit record: it is loaded, moved and saved within one
    fold of one fact, many times a second, and never shared. The claim waits
    since the last sample are kept apart (`ClaimWaits`): they change only when
    a claim is granted, and the counters change with every unit's every move.
    """

    deferred: int = 0
    throttled: int = 0
    scheduled: int = 0
    retry_wait: int = 0
    granted: int = 0
    sampled_at: int = 0

    @classmethod
    def load(cls, state: State) -> QueueCounters:
        d = state.get(QUEUE_KEY)
        if d is None:
            return cls()
        return cls(d["deferred"], d["throttled"], d["scheduled"], d["retry_wait"], d["granted"],
                   d["sampled_at"])

    def save(self, state: State) -> None:
        state.set(QUEUE_KEY, {
            "deferred": self.deferred, "throttled": self.throttled, "scheduled": self.scheduled,
            "retry_wait": self.retry_wait, "granted": self.granted,
            "sampled_at": self.sampled_at,
        })

    def move(self, before: QueueBucket | None, after: QueueBucket | None) -> None:
        """One unit moved from one bucket to another."""
        if before is not None:
            setattr(self, before, max(0, getattr(self, before) - 1))
        if after is not None:
            setattr(self, after, getattr(self, after) + 1)

    @property
    def queued(self) -> int:
        return self.deferred + self.scheduled + self.retry_wait


class ClaimWaits:
    """How long units waited for their claims since the last queue sample (the latest ones)."""

    @staticmethod
    def load(state: State) -> list[int]:
        waits: list[int] = state.get(WAITS_KEY) or []
        return waits

    @staticmethod
    def add(state: State, wait_ms: int) -> None:
        waits = [*ClaimWaits.load(state), wait_ms]
        state.set(WAITS_KEY, waits[-_MAX_WAITS:])

    @staticmethod
    def clear(state: State) -> None:
        state.delete(WAITS_KEY)
