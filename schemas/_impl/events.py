"""The event contracts as pydantic models.

The `.avsc` files in `schemas/avro/` are generated from these classes and
committed; `tests/schemas` fails when the two drift apart or when a change
would stop an older reader from reading new data. Add fields only with
defaults, never rename or retype one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from onceflow.schemas._impl.types import (
    ContentRef,
    EffectLabel,
    HealthStatus,
    IdempotencyClass,
    Money,
    PlacementCandidate,
    Priority,
    WorkKind,
)

__all__ = [
    "EVENT_MODELS",
    "BillingAnomaly",
    "CapacityAdmissionModeChanged",
    "CapacityScaleRequested",
    "CapacityWindowClosed",
    "ClaimGranted",
    "ClaimRejected",
    "ClaimRequested",
    "ClockTick",
    "ControlHumanInputSubmitted",
    "ControlOperatorResolved",
    "ControlSessionCancelRequested",
    "ControlSessionPaused",
    "ControlSessionResumed",
    "DeadLetterRecorded",
    "DecisionClosed",
    "EffectStaged",
    "Event",
    "LedgerChargeHeld",
    "LedgerLineItem",
    "LedgerUnitSettled",
    "LlmInvocationCompleted",
    "LlmInvocationFailed",
    "NodeHeartbeat",
    "QueueSampled",
    "TrustScoreUpdated",
    "ViewDefined",
    "WalletUpdated",
    "WorkUnitCancelled",
    "WorkUnitCompleted",
    "WorkUnitDeferred",
    "WorkUnitDependencyRegistered",
    "WorkUnitDependencyResolved",
    "WorkUnitFailed",
    "WorkUnitNeedsOperator",
    "WorkUnitRejected",
    "WorkUnitRetryScheduled",
    "WorkUnitScheduled",
    "WorkUnitSubmitted",
]

SYSTEM_TENANT = "system"


class Event(BaseModel):
    """The common envelope every onceflow event carries.

    `event_id` is deterministic (a hash of the causing event id and the
    output's role), which is what lets every consumer dedupe redeliveries.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    EVENT_TYPE: ClassVar[str] = ""
    AVRO_NAME: ClassVar[str] = ""
    #: The envelope field that names the entity whose partition the event lives in.
    ENTITY_FIELD: ClassVar[str] = "work_unit_id"

    event_id: str = Field(min_length=1)
    event_type: str
    occurred_at: int = Field(ge=0, description="producer timestamp, ms since the epoch")
    tenant_id: str = SYSTEM_TENANT
    execution_session_id: str = ""
    work_unit_id: str | None = None
    causation_id: str | None = None
    schema_version: int = 1

    def entity_id(self) -> str:
        value = getattr(self, self.ENTITY_FIELD)
        return str(value) if value is not None else self.event_id


# --- work units -------------------------------------------------------------


class WorkUnitSubmitted(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.submitted"
    AVRO_NAME: ClassVar[str] = "WorkUnitSubmitted"
    event_type: Literal["workunit.submitted"] = "workunit.submitted"
    kind: WorkKind = "cpu"
    priority: Priority = "p2"
    region: str | None = None
    required_concurrency: int = Field(default=1, ge=1)
    min_runtime_version: str = "0.0.0"
    effect: EffectLabel = "PURE"
    idempotency_class: IdempotencyClass = "none"
    max_attempts: int = Field(default=5, ge=1)
    lease_ms: int = Field(default=30_000, ge=1)
    depends_on: list[str] = Field(default_factory=list)
    handler: str | None = None
    simulated_ms: int = Field(default=0, ge=0)
    prompt: str | None = None
    model: str | None = None
    llm_tokens: int = Field(default=0, ge=0)
    correlation_id: str | None = None
    input_ref: ContentRef | None = None
    parameters: dict[str, str] = Field(default_factory=dict)


class WorkUnitScheduled(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.scheduled"
    AVRO_NAME: ClassVar[str] = "WorkUnitScheduled"
    event_type: Literal["workunit.scheduled"] = "workunit.scheduled"
    selected_node_id: str
    attempt_index: int = Field(ge=1)
    score: float
    eligible_node_count: int = Field(ge=0)
    reason_code: str
    scheduling_epoch: int = Field(ge=0)
    decided_at: int = Field(ge=0)
    lease_expires_at: int = Field(ge=0)
    candidates: list[PlacementCandidate] = Field(default_factory=list)
    kind: WorkKind = "cpu"
    priority: Priority = "p2"
    effect: EffectLabel = "PURE"
    idempotency_class: IdempotencyClass = "none"
    idempotency_key: str | None = None
    handler: str | None = None
    simulated_ms: int = 0
    prompt: str | None = None
    model: str | None = None
    input_ref: ContentRef | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    parent_result_refs: list[ContentRef] = Field(default_factory=list)
    streak_node_id: str | None = Field(
        default=None, description="the anti-affinity streak before this decision: its node"
    )
    streak_length: int = Field(default=0, description="and its length")
    admission_mode: str = "OPEN"
    tenant_correlation_id: str | None = None


class WorkUnitDeferred(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.deferred"
    AVRO_NAME: ClassVar[str] = "WorkUnitDeferred"
    event_type: Literal["workunit.deferred"] = "workunit.deferred"
    reason_code: str
    reason: str = ""
    eligible_node_count: int = 0
    decided_at: int = 0
    retry_at: int | None = None
    filter_counts: dict[str, int] = Field(default_factory=dict)
    candidates: list[PlacementCandidate] = Field(default_factory=list)


class WorkUnitRejected(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.rejected"
    AVRO_NAME: ClassVar[str] = "WorkUnitRejected"
    event_type: Literal["workunit.rejected"] = "workunit.rejected"
    reason_code: str
    reason: str = ""
    decided_at: int = 0


class WorkUnitRetryScheduled(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.retry.scheduled"
    AVRO_NAME: ClassVar[str] = "WorkUnitRetryScheduled"
    event_type: Literal["workunit.retry.scheduled"] = "workunit.retry.scheduled"
    attempt_index: int = Field(ge=1, description="the attempt that will run next")
    delay_ms: int = Field(ge=0)
    retry_at: int = Field(ge=0)
    error_code: str = ""
    reason_code: str = ""


class WorkUnitCompleted(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.completed"
    AVRO_NAME: ClassVar[str] = "WorkUnitCompleted"
    event_type: Literal["workunit.completed"] = "workunit.completed"
    selected_node_id: str
    attempt_index: int = Field(ge=1)
    correlation_id: str | None = None
    result_ref: ContentRef | None = None
    cpu_seconds: Money = Decimal("0")
    llm_tokens: int = 0
    started_at: int = 0
    finished_at: int = 0
    kind: WorkKind = "cpu"
    accepted: bool = Field(
        default=False, description="set by the scheduler: the grant holder's completion"
    )
    settlement_reason: str = Field(
        default="", description="why the scheduler accepted or rejected this completion"
    )
    incarnation: str = ""
    submitted_at: int = 0


class WorkUnitFailed(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.failed"
    AVRO_NAME: ClassVar[str] = "WorkUnitFailed"
    event_type: Literal["workunit.failed"] = "workunit.failed"
    selected_node_id: str = ""
    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    error_code: str
    error_reason: str = ""
    retryable: bool = False
    final: bool = Field(default=False, description="no further attempt will follow")
    incarnation: str = ""
    reported_by_scheduler: bool = Field(
        default=False, description="a lease expiry the scheduler decided, not an agent's report"
    )


class WorkUnitNeedsOperator(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.needs_operator"
    AVRO_NAME: ClassVar[str] = "WorkUnitNeedsOperator"
    event_type: Literal["workunit.needs_operator"] = "workunit.needs_operator"
    attempt_index: int = Field(ge=1)
    selected_node_id: str = ""
    effect: EffectLabel = "WORLD_MUTATING"
    idempotency_class: IdempotencyClass = "none"
    reason_code: str
    reason: str = ""


class WorkUnitDependencyRegistered(Event):
    """A child asks its parent's partition to tell it when the parent is done.

    Keyed and partitioned by the parent (`work_unit_id`), so the parent's
    single writer answers, whichever partition the child lives in.
    """

    EVENT_TYPE: ClassVar[str] = "workunit.dependency.registered"
    AVRO_NAME: ClassVar[str] = "WorkUnitDependencyRegistered"
    event_type: Literal["workunit.dependency.registered"] = "workunit.dependency.registered"
    child_work_unit_id: str
    parent_outcome: str = Field(
        default="", description="set by the parent's scheduler once it knows: completed | failed"
    )
    parent_result_ref: ContentRef | None = None


class WorkUnitDependencyResolved(Event):
    """The parent's outcome, sent to the child's partition (`work_unit_id` is the child)."""

    EVENT_TYPE: ClassVar[str] = "workunit.dependency.resolved"
    AVRO_NAME: ClassVar[str] = "WorkUnitDependencyResolved"
    event_type: Literal["workunit.dependency.resolved"] = "workunit.dependency.resolved"
    parent_work_unit_id: str
    outcome: Literal["completed", "failed"]
    result_ref: ContentRef | None = None


class WorkUnitCancelled(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.cancelled"
    AVRO_NAME: ClassVar[str] = "WorkUnitCancelled"
    event_type: Literal["workunit.cancelled"] = "workunit.cancelled"
    reason: str = ""
    requested_by: str = ""


# --- claims -----------------------------------------------------------------


class ClaimRequested(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.claim.requested"
    AVRO_NAME: ClassVar[str] = "ClaimRequested"
    event_type: Literal["workunit.claim.requested"] = "workunit.claim.requested"
    node_id: str
    attempt_index: int = Field(ge=1)
    scheduling_epoch: int = 0
    incarnation: str = Field(
        default="", description="which run of the node's agent asks; a restarted agent differs"
    )


class ClaimGranted(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.claim.granted"
    AVRO_NAME: ClassVar[str] = "ClaimGranted"
    event_type: Literal["workunit.claim.granted"] = "workunit.claim.granted"
    node_id: str
    attempt_index: int = Field(ge=1)
    lease_expires_at: int = 0
    idempotency_key: str | None = None
    incarnation: str = ""


class ClaimRejected(Event):
    EVENT_TYPE: ClassVar[str] = "workunit.claim.rejected"
    AVRO_NAME: ClassVar[str] = "ClaimRejected"
    event_type: Literal["workunit.claim.rejected"] = "workunit.claim.rejected"
    node_id: str
    attempt_index: int = Field(ge=1)
    reason_code: str
    incarnation: str = ""


class EffectStaged(Event):
    EVENT_TYPE: ClassVar[str] = "effect.staged"
    AVRO_NAME: ClassVar[str] = "EffectStaged"
    event_type: Literal["effect.staged"] = "effect.staged"
    node_id: str
    attempt_index: int = Field(ge=1)
    idempotency_key: str | None = None
    description: str = ""
    intent_ref: ContentRef | None = None


# --- LLM ----------------------------------------------------------------------


class LlmInvocationCompleted(Event):
    EVENT_TYPE: ClassVar[str] = "llm.invocation.completed"
    AVRO_NAME: ClassVar[str] = "LlmInvocationCompleted"
    event_type: Literal["llm.invocation.completed"] = "llm.invocation.completed"
    node_id: str
    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    provider: str
    model: str
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    latency_ms: int = Field(ge=0)
    estimated_cost_usd: Money
    response_ref: ContentRef | None = None


class LlmInvocationFailed(Event):
    EVENT_TYPE: ClassVar[str] = "llm.invocation.failed"
    AVRO_NAME: ClassVar[str] = "LlmInvocationFailed"
    event_type: Literal["llm.invocation.failed"] = "llm.invocation.failed"
    node_id: str
    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    provider: str
    model: str
    error_code: str
    error_reason: str = ""
    latency_ms: int = 0
    tokens_in: int = 0


# --- nodes and trust ----------------------------------------------------------


class NodeHeartbeat(Event):
    EVENT_TYPE: ClassVar[str] = "node.heartbeat"
    AVRO_NAME: ClassVar[str] = "NodeHeartbeat"
    ENTITY_FIELD: ClassVar[str] = "node_id"
    event_type: Literal["node.heartbeat"] = "node.heartbeat"
    node_id: str
    enabled: bool = True
    health_status: HealthStatus = "healthy"
    supported_kinds: list[str] = Field(default_factory=list)
    max_concurrency: int = 1
    available_concurrency: int = 0
    active_queue_depth: int = 0
    utilization: float = 0.0
    region: str | None = None
    version: str = "0.0.0"
    sequence: int = 0


class TrustScoreUpdated(Event):
    EVENT_TYPE: ClassVar[str] = "trust.score.updated"
    AVRO_NAME: ClassVar[str] = "TrustScoreUpdated"
    ENTITY_FIELD: ClassVar[str] = "node_id"
    event_type: Literal["trust.score.updated"] = "trust.score.updated"
    node_id: str
    trust_score: float
    previous_score: float = 0.5
    alpha: float = 2.0
    beta: float = 2.0
    timeout_penalty: float = 0.0
    health_penalty: float = 0.0
    quarantined: bool = False
    reason: str = ""
    reliability: float = Field(default=0.5, description="alpha / (alpha + beta)")
    health_status: str = "healthy"
    outcome: str = Field(default="", description="what moved the score: success, failure, "
                                                 "timeout or heartbeat")
    source_event_id: str = ""
    previous_alpha: float = 2.0
    previous_beta: float = 2.0
    previous_timeout_penalty: float = 0.0
    previous_at: int = Field(default=0, description="logged time of the previous update, ms")
    previous_quarantined: bool = False


# --- capacity -----------------------------------------------------------------


class QueueSampled(Event):
    """One scheduler partition's queue, sampled on its clock: the autoscaler's input.

    `queue` is the work waiting for capacity (deferred for want of a node,
    scheduled and not yet claimed, waiting to be retried); units held back by
    THROTTLED admission are counted apart (`throttled`), so that throttling
    does not keep itself going. Node figures come from the scheduler's view of
    the heartbeats at the time, recorded because that view is a global table.
    """

    EVENT_TYPE: ClassVar[str] = "scheduler.queue.sampled"
    AVRO_NAME: ClassVar[str] = "QueueSampled"
    ENTITY_FIELD: ClassVar[str] = "event_type"
    event_type: Literal["scheduler.queue.sampled"] = "scheduler.queue.sampled"
    partition: int = 0
    queue: int = 0
    deferred: int = 0
    throttled: int = 0
    running: int = 0
    wait_p95_ms: float = 0.0
    waits_sampled: int = 0
    node_count: int = 0
    utilization: float = 0.0
    admission_mode: str = "OPEN"


class CapacityWindowClosed(Event):
    """The autoscaler closed a window: its metrics, the rule streaks after it, and why.

    The record a scaling or mode decision is re-checked from.
    """

    EVENT_TYPE: ClassVar[str] = "capacity.window.closed"
    AVRO_NAME: ClassVar[str] = "CapacityWindowClosed"
    ENTITY_FIELD: ClassVar[str] = "event_type"
    event_type: Literal["capacity.window.closed"] = "capacity.window.closed"
    window_start: int
    window_end: int
    samples: int = 0
    queue_depth: int = 0
    throttled: int = 0
    wait_p95_ms: float = 0.0
    utilization: float = 0.0
    node_count: int = 0
    up_streak: int = 0
    down_streak: int = 0
    critical_streak: int = 0
    open_streak: int = 0
    replicas: int = 1
    mode: Literal["OPEN", "THROTTLED", "CRITICAL"] = "OPEN"
    previous_up_streak: int = 0
    previous_down_streak: int = 0
    previous_critical_streak: int = 0
    previous_open_streak: int = 0
    previous_replicas: int = 1
    previous_mode: Literal["OPEN", "THROTTLED", "CRITICAL"] = "OPEN"
    last_scale_up_at: int = 0
    last_scale_down_at: int = 0
    previous_last_scale_up_at: int = 0
    previous_last_scale_down_at: int = 0
    decision: str = Field(default="", description="scale_up, scale_down, a mode change, or "
                                                  "empty")


class CapacityScaleRequested(Event):
    EVENT_TYPE: ClassVar[str] = "capacity.scale.requested"
    AVRO_NAME: ClassVar[str] = "CapacityScaleRequested"
    ENTITY_FIELD: ClassVar[str] = "event_type"
    event_type: Literal["capacity.scale.requested"] = "capacity.scale.requested"
    previous_replicas: int
    new_replicas: int
    reason: str
    queue_depth: int = 0
    wait_p95_ms: float = 0.0
    utilization: float = 0.0
    window_start: int = 0
    window_end: int = 0


class CapacityAdmissionModeChanged(Event):
    EVENT_TYPE: ClassVar[str] = "capacity.admission.mode.changed"
    AVRO_NAME: ClassVar[str] = "CapacityAdmissionModeChanged"
    ENTITY_FIELD: ClassVar[str] = "event_type"
    event_type: Literal["capacity.admission.mode.changed"] = "capacity.admission.mode.changed"
    previous_mode: Literal["OPEN", "THROTTLED", "CRITICAL"]
    new_mode: Literal["OPEN", "THROTTLED", "CRITICAL"]
    reason: str
    queue_depth: int = 0
    wait_p95_ms: float = 0.0
    utilization: float = 0.0
    window_start: int = 0
    window_end: int = 0


# --- billing ------------------------------------------------------------------


class LedgerLineItem(Event):
    EVENT_TYPE: ClassVar[str] = "ledger.line_item"
    AVRO_NAME: ClassVar[str] = "LedgerLineItem"
    event_type: Literal["ledger.line_item"] = "ledger.line_item"
    line_item_id: str
    source_event_id: str
    source_event_type: str
    correlation_id: str | None = None
    line_item_type: Literal["workunit_cpu", "llm_tokens"]
    node_id: str | None = None
    model: str | None = None
    cpu_seconds: Money = Decimal("0")
    llm_tokens: int = 0
    llm_tokens_event_total: int = 0
    cpu_unit_price_usd: Money = Decimal("0")
    llm_unit_price_usd_per_1k: Money = Decimal("0")
    subtotal_cpu_usd: Money = Decimal("0")
    subtotal_llm_usd: Money = Decimal("0")
    total_usd: Money
    currency: str = "USD"
    rounded_scale: int = 6
    rounding_mode: str = "ROUND_HALF_EVEN"
    pricing_version: str
    billed: bool = True
    attempt_index: int = Field(default=0, ge=0, description="the attempt the source belongs to")
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    llm_input_price_usd_per_1k: Money = Decimal("0")
    llm_output_price_usd_per_1k: Money = Decimal("0")
    subtotal_llm_input_usd: Money = Decimal("0")
    subtotal_llm_output_usd: Money = Decimal("0")
    leakage_reason: str = Field(
        default="", description="why an unbilled line item was not charged (billed = false)"
    )


class LedgerChargeHeld(Event):
    """An LLM invocation priced and waiting for its unit to settle.

    Only the accepted attempt's invocations are charged, and which attempt
    that is is known only at settlement, which may come before or after the
    invocation. The ledger records the hold as a fact (its changelog), so a
    restarted ledger knows what it is holding.
    """

    EVENT_TYPE: ClassVar[str] = "ledger.charge.held"
    AVRO_NAME: ClassVar[str] = "LedgerChargeHeld"
    event_type: Literal["ledger.charge.held"] = "ledger.charge.held"
    source_event_id: str
    source_event_type: str
    source_occurred_at: int = 0
    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    node_id: str | None = None
    model: str | None = None
    provider: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    total_tokens: int = 0
    llm_input_price_usd_per_1k: Money = Decimal("0")
    llm_output_price_usd_per_1k: Money = Decimal("0")
    pricing_version: str = ""


class LedgerUnitSettled(Event):
    """The ledger learned how a unit ended: which attempt, if any, may be charged.

    Invocations that arrive after this are decided at once (billed when they
    belong to the accepted attempt, leakage otherwise); ones held before it
    are decided in the same decision.
    """

    EVENT_TYPE: ClassVar[str] = "ledger.unit.settled"
    AVRO_NAME: ClassVar[str] = "LedgerUnitSettled"
    event_type: Literal["ledger.unit.settled"] = "ledger.unit.settled"
    outcome: Literal["accepted", "failed", "cancelled"]
    accepted_attempt: int = Field(default=0, ge=0, description="0 when no attempt was accepted")
    source_event_id: str = ""
    settlement_reason: str = ""


class WalletUpdated(Event):
    EVENT_TYPE: ClassVar[str] = "wallet.updated"
    AVRO_NAME: ClassVar[str] = "WalletUpdated"
    ENTITY_FIELD: ClassVar[str] = "tenant_id"
    event_type: Literal["wallet.updated"] = "wallet.updated"
    balance_usd: Money
    total_debit_usd: Money
    total_credit_usd: Money
    record_count: int = 0
    last_line_item_id: str | None = None
    wallet_id: str = Field(
        default="", description="tenant:{tenant} or session:{tenant}:{session}, with @{partition}"
    )
    scope: Literal["tenant", "session"] = "tenant"
    ledger_partition: int = Field(
        default=0, ge=0,
        description="the ledger partition this partial wallet folds; a wallet is the sum of "
                    "its partials, one per ledger partition",
    )
    prepaid: bool = Field(default=False, description="a prepaid credit limits this tenant")
    total_leakage_usd: Money = Decimal("0")
    leakage_count: int = 0


class BillingAnomaly(Event):
    EVENT_TYPE: ClassVar[str] = "billing.anomaly"
    AVRO_NAME: ClassVar[str] = "BillingAnomaly"
    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    event_type: Literal["billing.anomaly"] = "billing.anomaly"
    check: str
    severity: Literal["info", "warning", "flag"] = "flag"
    subject_id: str = ""
    expected: str = ""
    observed: str = ""
    message: str = ""


class ViewDefined(Event):
    """A ksql-style view over the ledger was created or dropped.

    Kept on a compacted topic keyed by the view's name, so every replica of
    the views processor, and every restart, holds the same views.
    """

    EVENT_TYPE: ClassVar[str] = "view.defined"
    AVRO_NAME: ClassVar[str] = "ViewDefined"
    ENTITY_FIELD: ClassVar[str] = "view_name"
    event_type: Literal["view.defined"] = "view.defined"
    view_name: str
    kind: Literal["table", "stream"] = "table"
    statement: str = Field(default="", description="the statement as the user wrote it")
    query_sql: str = Field(default="", description="the SELECT it runs, in DuckDB's dialect")
    windowed: bool = False
    dropped: bool = False


# --- control ------------------------------------------------------------------


class ControlSessionPaused(Event):
    EVENT_TYPE: ClassVar[str] = "control.session.paused"
    AVRO_NAME: ClassVar[str] = "ControlSessionPaused"
    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    event_type: Literal["control.session.paused"] = "control.session.paused"
    requested_by: str = ""
    reason: str = ""


class ControlSessionResumed(Event):
    EVENT_TYPE: ClassVar[str] = "control.session.resumed"
    AVRO_NAME: ClassVar[str] = "ControlSessionResumed"
    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    event_type: Literal["control.session.resumed"] = "control.session.resumed"
    requested_by: str = ""
    reason: str = ""


class ControlSessionCancelRequested(Event):
    EVENT_TYPE: ClassVar[str] = "control.cancel.requested"
    AVRO_NAME: ClassVar[str] = "ControlSessionCancelRequested"
    event_type: Literal["control.cancel.requested"] = "control.cancel.requested"
    requested_by: str = ""
    reason: str = ""


class ControlHumanInputSubmitted(Event):
    EVENT_TYPE: ClassVar[str] = "control.human_input.submitted"
    AVRO_NAME: ClassVar[str] = "ControlHumanInputSubmitted"
    event_type: Literal["control.human_input.submitted"] = "control.human_input.submitted"
    prompt_id: str
    input_ref: ContentRef | None = None
    text: str | None = None
    submitted_by: str = ""


class ControlOperatorResolved(Event):
    EVENT_TYPE: ClassVar[str] = "control.operator.resolved"
    AVRO_NAME: ClassVar[str] = "ControlOperatorResolved"
    event_type: Literal["control.operator.resolved"] = "control.operator.resolved"
    resolution: Literal["retry", "mark_done", "abandon"]
    result_ref: ContentRef | None = None
    operator: str = ""
    note: str = ""


class ClockTick(Event):
    """Time entering the log: reducers never read the wall clock."""

    EVENT_TYPE: ClassVar[str] = "clock.tick"
    AVRO_NAME: ClassVar[str] = "ClockTick"
    ENTITY_FIELD: ClassVar[str] = "event_id"
    event_type: Literal["clock.tick"] = "clock.tick"
    partition: int = 0
    sequence: int = 0


# --- the processor runtime ----------------------------------------------------


class DecisionClosed(Event):
    """The end of a decision whose facts were only partly written before a crash.

    A processor that re-decides an input after a crash normally repeats the
    facts already in its log byte for byte and writes the rest. When the new
    decision differs (it read something outside the partition's log, such as
    a global table), the facts in the log stand: the written part becomes
    the whole decision, and this event, its last fact, says so. No fact id is
    written twice and no reader sees two versions of one. Reducers never see
    it; the shell folds it.
    """

    EVENT_TYPE: ClassVar[str] = "processor.decision.closed"
    AVRO_NAME: ClassVar[str] = "ProcessorDecisionClosed"
    event_type: Literal["processor.decision.closed"] = "processor.decision.closed"
    processor: str
    facts_kept: int = Field(ge=0)
    reason: str = ""


# --- dead letters -------------------------------------------------------------


class DeadLetterRecorded(Event):
    """How a dead letter reads once its headers are decoded.

    The dead-letter topic keeps the failed record's bytes unchanged; this
    model is the readable view `onceflow tail` builds from them and their
    origin headers.
    """

    EVENT_TYPE: ClassVar[str] = "deadletter.recorded"
    AVRO_NAME: ClassVar[str] = "DeadLetterRecorded"
    ENTITY_FIELD: ClassVar[str] = "event_id"
    event_type: Literal["deadletter.recorded"] = "deadletter.recorded"
    origin_topic: str
    origin_partition: int
    origin_offset: int
    processor: str
    error: str
    error_type: str = ""
    payload: bytes = b""
    payload_key: bytes | None = None


EVENT_MODELS: tuple[type[Event], ...] = (
    WorkUnitSubmitted,
    WorkUnitScheduled,
    WorkUnitDeferred,
    WorkUnitRejected,
    WorkUnitRetryScheduled,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitNeedsOperator,
    WorkUnitCancelled,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    ClaimRequested,
    ClaimGranted,
    ClaimRejected,
    EffectStaged,
    LlmInvocationCompleted,
    LlmInvocationFailed,
    NodeHeartbeat,
    TrustScoreUpdated,
    CapacityScaleRequested,
    CapacityAdmissionModeChanged,
    QueueSampled,
    CapacityWindowClosed,
    LedgerLineItem,
    LedgerChargeHeld,
    LedgerUnitSettled,
    WalletUpdated,
    BillingAnomaly,
    ViewDefined,
    ControlSessionPaused,
    ControlSessionResumed,
    ControlSessionCancelRequested,
    ControlHumanInputSubmitted,
    ControlOperatorResolved,
    ClockTick,
    DecisionClosed,
    DeadLetterRecorded,
)
