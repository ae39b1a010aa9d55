"""The event contracts as pydantic models.

The `.avsc` files in `schemas/avro/` are generated from these classes and
committed; `tests/schemas` fails when the two drift apart or when a change
would stop an older reader from reading new data. Add fields only with
defaults, never rename or retype one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from onceflow.schemas._impl.reasons import (
    BreakerState,
    ClaimRejectionReason,
    ControlAction,
    ControlOutcome,
    ControlScope,
    DeferralReason,
    DenialReason,
    LedgerOutcome,
    LineItemType,
    NeedsOperatorReason,
    PlacementReason,
    RejectionReason,
    RetryReason,
    SessionFailurePolicy,
    SessionLimitName,
    SessionLimitThreshold,
    SettlementReason,
    SlotReleaseReason,
    TrustOutcome,
    TrustReason,
)
from onceflow.schemas._impl.types import (
    AdmissionMode,
    Amount,
    BreakerBucket,
    ContentRef,
    EffectLabel,
    HealthStatus,
    IdempotencyClass,
    Money,
    PlacementCandidate,
    Priority,
    SessionLimitPolicy,
    SessionLimits,
    WorkKind,
)

__all__ = [
    "EVENT_MODELS",
    "AttemptFailure",
    "AttemptResult",
    "BillingAnomaly",
    "BudgetSettled",
    "CapacityAdmissionModeChanged",
    "CapacityScaleRequested",
    "CapacityWindowClosed",
    "ClaimGranted",
    "ClaimRejected",
    "ClaimRequested",
    "ClockTick",
    "ControlApplied",
    "ControlHumanInputSubmitted",
    "ControlOperatorResolved",
    "ControlRequested",
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
    "ProviderScopePaused",
    "QueueSampled",
    "RetryDenied",
    "RetryGranted",
    "RetryRequested",
    "SessionLimitCrossed",
    "SessionLimitsChanged",
    "SessionLimitsSet",
    "SlotDenied",
    "SlotGranted",
    "SlotQueued",
    "SlotReleased",
    "SlotRequested",
    "StateRetired",
    "TrustScoreUpdated",
    "ViewDefined",
    "WalletUpdated",
    "WorkUnitAttemptFailed",
    "WorkUnitAttemptStopped",
    "WorkUnitCancelled",
    "WorkUnitCompleted",
    "WorkUnitDeferred",
    "WorkUnitDependencyProbe",
    "WorkUnitDependencyRegistered",
    "WorkUnitDependencyResolved",
    "WorkUnitFailed",
    "WorkUnitFailureReported",
    "WorkUnitNeedsOperator",
    "WorkUnitRejected",
    "WorkUnitResultReported",
    "WorkUnitRetryScheduled",
    "WorkUnitScheduled",
    "WorkUnitSubmitted",
    "upcast_legacy_failure",
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
    #: each event class's own type string (see `__init_subclass__`)
    event_type: str = ""
    occurred_at: int = Field(ge=0, description="producer timestamp, ms since the epoch")
    tenant_id: str = SYSTEM_TENANT
    execution_session_id: str = ""
    work_unit_id: str | None = None
    causation_id: str | None = None
    schema_version: int = Field(
        default=6, description="the schema release the writer used (schemas/released/v<n>)")

    def __init_subclass__(cls, *, event_type: str = "", avro_name: str = "",
                          **kwargs: Any) -> None:
        """One declaration per event class: `class X(Event, event_type="a.b")`.

        The type string becomes the class's `EVENT_TYPE`, the `event_type`
        field's only value and its default; the Avro record is named after
        the class unless `avro_name` keeps an older released name. Pydantic
        collects the fields after this runs, so the narrowed annotation is
        what it sees.
        """
        super().__init_subclass__(**kwargs)
        if not event_type:
            return
        cls.EVENT_TYPE = event_type
        cls.AVRO_NAME = avro_name or cls.__name__
        cls.__annotations__["event_type"] = Literal[event_type]
        setattr(cls, "event_type", event_type)  # noqa: B010 (a field default, not an attribute)

    def entity_id(self) -> str:
        value = getattr(self, self.ENTITY_FIELD)
        return str(value) if value is not None else self.event_id


# --- work units -------------------------------------------------------------


class WorkUnitSubmitted(Event, event_type="workunit.submitted"):
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
    session_budget_usd: Amount | None = Field(
        default=None, description="the most the unit's session may be charged (USD): units are "
        "held against it before they run; the first submission of a session that sets it wins")
    requires_approval: bool = Field(
        default=False, description="a person approves it before it runs (onceflow approve); "
        "without one by its deadline it fails closed, nothing applied")
    approval_timeout_ms: int = Field(
        default=0, ge=0, description="how long it waits for a person (its approval, or an "
        "input step's answer), in logged time (0: ONCEFLOW_SCHEDULER__APPROVAL_TIMEOUT_MS)")
    session_limits: SessionLimits | None = Field(
        default=None, description="the session's execution limits; the first submission of a "
        "session that sets them wins (an operator may change them: onceflow session limits)")
    failure_policy: SessionFailurePolicy = Field(
        default="continue", description="what this step's failure does to its session: "
        "continue (only its dependents fail) or fail_fast (the session is cancelled)")


class WorkUnitScheduled(Event, event_type="workunit.scheduled"):
    selected_node_id: str
    attempt_index: int = Field(ge=1)
    score: float
    eligible_node_count: int = Field(ge=0)
    reason_code: PlacementReason
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


class WorkUnitDeferred(Event, event_type="workunit.deferred"):
    reason_code: DeferralReason
    reason: str = ""
    eligible_node_count: int = 0
    decided_at: int = 0
    retry_at: int | None = None
    filter_counts: dict[str, int] = Field(default_factory=dict)
    candidates: list[PlacementCandidate] = Field(default_factory=list)


class WorkUnitRejected(Event, event_type="workunit.rejected"):
    reason_code: RejectionReason
    reason: str = ""
    decided_at: int = 0


class WorkUnitRetryScheduled(Event, event_type="workunit.retry.scheduled"):
    attempt_index: int = Field(ge=1, description="the attempt that will run next")
    delay_ms: int = Field(ge=0)
    retry_at: int = Field(ge=0)
    error_code: str = ""
    reason_code: RetryReason = "retryable_error"


class AttemptResult(Event):
    """What an attempt produced: reported by the agent, restated in its settlement."""

    attempt_index: int = Field(ge=1)
    incarnation: str = Field(default="", description="which run of the node's agent ran it")
    correlation_id: str | None = None
    result_ref: ContentRef | None = None
    cpu_seconds: Amount = Decimal("0")
    llm_tokens: int = 0
    started_at: int = 0
    finished_at: int = 0
    kind: WorkKind = "cpu"


class WorkUnitResultReported(AttemptResult, event_type="workunit.result.reported"):
    """An agent's report that its attempt finished with a result (to `reports`).

    A claim, not a fact: the scheduler settles it (`workunit.completed`),
    accepting it only from the attempt that holds the grant.
    """

    node_id: str = Field(description="the node whose agent ran the attempt")


class WorkUnitCompleted(AttemptResult, event_type="workunit.completed"):
    """The scheduler's settlement of a reported result: accepted, or refused and why.

    Only the scheduler writes it (to `workunits`); what an agent reports is a
    `workunit.result.reported`. A refused result is settled too, so the
    ledger can show what the fenced attempt cost. Records from before the
    report had its own type carry `settlement_reason` "" and were reports.
    """

    selected_node_id: str = Field(description="the node that ran the attempt")
    accepted: bool = Field(
        default=False, description="the result is the unit's: the grant holder's, or an operator's"
    )
    settlement_reason: SettlementReason = Field(
        default="", description="why the scheduler accepted or refused this result"
    )
    submitted_at: int = 0


class AttemptFailure(Event):
    """How an attempt ended without a result: reported by its agent, restated by the
    scheduler as an attempt that failed or one a cancel stopped."""

    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    error_code: str
    error_reason: str = ""
    incarnation: str = Field(default="", description="which run of the node's agent ran it")
    retry_at: int = Field(
        default=0, description="provider_backoff: when the provider said to come back (ms)")
    provider: str = Field(default="", description="provider_backoff: the provider that said so")
    model: str = Field(default="", description="provider_backoff: the model that was called")
    cpu_seconds: Amount = Field(
        default=Decimal("0"), description="what the attempt ran before it ended (the agent's "
        "word): the work a cancelled attempt did before it stopped is billed from it")


class WorkUnitFailureReported(AttemptFailure, event_type="workunit.failure.reported"):
    """A node agent's report that the attempt it was granted ended without a result (its
    handler failed, its provider refused, or a cancel stopped it). Only a report: the
    scheduler decides what it means (`workunit.attempt.failed`, `.attempt.stopped`)."""

    node_id: str


class WorkUnitAttemptFailed(AttemptFailure, event_type="workunit.attempt.failed"):
    """An attempt that held the grant ended without a result: its agent's report, or a
    lease that ran out with none. What follows is the scheduler's next fact: a retry, a
    retry request to the tenant's budget, an operator's inbox, or `workunit.failed`."""

    selected_node_id: str = ""
    retryable: bool = False
    lease_expired: bool = Field(
        default=False, description="no report came: the attempt's lease ran out")


class WorkUnitAttemptStopped(AttemptFailure, event_type="workunit.attempt.stopped"):
    """The attempt a cancel stopped, stopping (its agent's word, recorded once): the work
    it did before the cancel is billed from it."""

    selected_node_id: str = ""


class WorkUnitFailed(Event, event_type="workunit.failed"):
    """The scheduler's decision that a unit has failed for good: no attempt follows.

    Releases before 6 wrote this type for every failed attempt too (`final` false):
    decoding one gives the type of its meaning instead (`upcast_legacy_failure`)."""

    selected_node_id: str = ""
    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    error_code: str
    error_reason: str = ""
    retryable: bool = False
    final: bool = Field(default=False, description="written true since release 6 (before: "
                        "false for an attempt that failed; the default reads releases that "
                        "had no such field)")
    incarnation: str = ""
    reported_by_scheduler: bool = Field(
        default=False, description="written true since release 6 (before: false for an "
        "agent's report and its restatement)")
    retry_at: int = Field(default=0, description="unused since release 6")
    provider: str = Field(default="", description="unused since release 6")
    model: str = Field(default="", description="unused since release 6")
    cpu_seconds: Amount = Field(default=Decimal("0"), description="unused since release 6")


def upcast_legacy_failure(event: WorkUnitFailed) -> Event:
    """A `workunit.failed` as its meaning: releases before 6 wrote this one type for the
    agent's report of a failed attempt, the scheduler's restatement of it, a lease that ran
    out and an attempt a cancel stopped (`final` false), told apart by flags. The decoder
    hands readers the type of its meaning; a final one is itself."""
    if event.final:
        return event
    common = {**event.model_dump(include=set(AttemptFailure.model_fields) - {"event_type"}),
              "schema_version": event.schema_version}
    if event.error_code == "cancelled":
        return WorkUnitAttemptStopped(**common, selected_node_id=event.selected_node_id)
    return WorkUnitAttemptFailed(**common, selected_node_id=event.selected_node_id,
                                 retryable=event.retryable,
                                 lease_expired=event.reported_by_scheduler)


class WorkUnitNeedsOperator(Event, event_type="workunit.needs_operator"):
    attempt_index: int = Field(ge=1)
    selected_node_id: str = ""
    effect: EffectLabel = "WORLD_MUTATING"
    idempotency_class: IdempotencyClass = "none"
    reason_code: NeedsOperatorReason
    reason: str = ""


class WorkUnitDependencyRegistered(Event, event_type="workunit.dependency.registered"):
    """A child asks its parent's partition to tell it when the parent is done.

    Keyed and partitioned by the parent (`work_unit_id`), so the parent's
    single writer answers, whichever partition the child lives in.
    """

    child_work_unit_id: str
    parent_outcome: Literal["", "completed", "failed", "unknown"] = Field(
        default="", description="set by the parent's scheduler once it knows: completed | "
        "failed | unknown (no such unit was submitted in time)"
    )
    parent_result_ref: ContentRef | None = None


class WorkUnitDependencyResolved(Event, event_type="workunit.dependency.resolved"):
    """The parent's outcome, sent to the child's partition (`work_unit_id` is the child)."""

    parent_work_unit_id: str
    outcome: Literal["completed", "failed", "unknown"]
    result_ref: ContentRef | None = None


class WorkUnitDependencyProbe(Event, event_type="workunit.dependency.probe"):
    """A search for a cycle in `depends_on` across partitions (edge chasing).

    Sent to a unit (`work_unit_id`) that a waiting unit waits on, with the
    chain of waits that led there; a unit that finds one of its own pending
    parents in the chain has closed a cycle and fails (`depends_on_cycle`).
    """

    path: list[str] = Field(description="the units that wait, each on the next, in order")


class ProviderScopePaused(Event, event_type="provider.scope.paused"):
    """An LLM scope paused for every tenant: its provider answered 429 or 503.

    Written by the scheduler partition that settled the failed attempt, and
    sent to every scheduler partition, which defers that scope's units until
    `paused_until` instead of letting them run into the same answer.
    """

    scope: str = Field(description="what is paused: model:<the units' model> ('' the default)")
    paused_until: int = Field(ge=0, description="logged time the provider named, ms")
    provider: str = ""
    model: str = Field(default="", description="the model the provider was called with")
    broadcast: bool = Field(
        default=True, description="the deciding partition's fact, sent on to every partition")


class SlotRequested(Event, event_type="flow.slot.requested"):
    """A unit asks for a slot in every limited scope it belongs to (to the limiter).

    Written by the scheduler when a unit with a limited scope is ready to be
    placed; the limiter grants all its scopes at once or queues the request.
    """

    attempt_index: int = Field(ge=1, description="the attempt the slots are for")
    scopes: list[str] = Field(description="e.g. global, tenant:acme, model:gpt-x")
    priority: Priority = "p2"
    cost: float = Field(
        default=1.0, ge=0, description="what the unit will likely cost (USD): its fair share")
    hold_usd: Amount = Field(
        default=Decimal("0"), description="the unit's maximum cost, held against its tenant's "
        "prepaid credit and its session budget until the ledger bills it (0: hold nothing)")
    session_budget_usd: Amount | None = Field(
        default=None, description="the session's budget, as its submission set it")
    tokens: int = Field(
        default=0, ge=0, description="estimated tokens (input plus price-weighted output) "
        "for token rate limits")
    kind: WorkKind = "cpu"
    session_limits: SessionLimits | None = Field(
        default=None, description="the session's execution limits, as its submission set them")
    session_tokens: int = Field(
        default=0, ge=0, description="the most tokens (input plus max_tokens out) it may use, "
        "held against its session's max_tokens")


class SlotGranted(Event, event_type="flow.slot.granted"):
    """The limiter took a slot in each of the unit's scopes; the unit may be placed."""

    attempt_index: int = Field(ge=1)
    scopes: list[str] = Field(default_factory=list)
    waited_ms: int = Field(default=0, ge=0, description="from the request to this grant")
    not_before: int = Field(
        default=0, ge=0, description="a rate limit's turn: the unit is placed at this logged "
        "time, not before (0: now)")
    held_usd: Amount = Field(default=Decimal("0"), description="the budget held for the unit")
    budget_scopes: list[str] = Field(
        default_factory=list, description="the budgets it is held against: tenant:<t>, "
        "session:<t>/<s>")
    session_budget_usd: Amount | None = None
    tokens: int = Field(default=0, ge=0, description="estimated tokens taken from rate windows")
    rate_levels: dict[str, float] = Field(
        default_factory=dict, description="each rate window it took from, after taking: "
        "rpm:<scope> / tpm:<scope> -> what is left (negative: owed by later requests)")
    kind: WorkKind = "cpu"
    session_limits: SessionLimits | None = Field(
        default=None, description="set when the grant counts against its session's limits")
    session_tokens: int = Field(default=0, ge=0, description="tokens held against max_tokens")


class SlotDenied(Event, event_type="flow.slot.denied"):
    """The limiter refused a request for good: its maximum cost exceeds what its budget has left.

    Units that could fit once other units' holds settle wait (`SlotQueued`)
    instead; this is for a cost that charges already made leave no room for.
    """

    attempt_index: int = Field(ge=1)
    reason_code: DenialReason
    reason: str
    scope: str = Field(description="the budget: tenant:<t> or session:<t>/<s>; or the session "
                       "whose limit is reached")
    budget_usd: Amount = Decimal("0")
    charged_usd: Amount = Decimal("0")
    reserved_usd: Amount = Decimal("0")
    hold_usd: Amount = Decimal("0")
    on_limit: SessionLimitPolicy = Field(
        default="park", description="SESSION_LIMIT: the session's policy (park or cancel)")


class BudgetSettled(Event, event_type="flow.budget.settled"):
    """The ledger's word on a unit reached the limiter: its charges count, its hold ends.

    One per routed ledger fact: a billed line item adds its amount to the
    charged totals (and its real tokens correct the token rate windows); the
    unit's settlement releases what was held for it.
    """

    source_event_id: str
    charged_usd: Amount = Decimal("0")
    released_usd: Amount = Decimal("0")
    tokens_used: int = Field(default=0, ge=0, description="real weighted tokens, from usage")
    unit_settled: bool = Field(
        default=False, description="the ledger settled the unit: what was held for it ends")
    rate_levels: dict[str, float] = Field(
        default_factory=dict, description="token windows after the correction (see SlotGranted)")
    session_tokens: int = Field(
        default=0, ge=0, description="tokens billed (input plus output), against max_tokens")
    released_tokens: int = Field(
        default=0, ge=0, description="tokens the settled unit held against max_tokens")
    llm_billed: bool = Field(
        default=False, description="the charge is an LLM call's tokens, billed (a fenced "
        "attempt's tokens are leakage: they do not end a hold that waits for them)")
    awaiting_llm: bool = Field(
        default=False, description="the unit settled before its LLM call's tokens were "
        "billed (two topics): its hold stays until they are")


class SessionLimitCrossed(Event, event_type="flow.session.limit"):
    """A session came to 80 % of one of its execution limits (a warning) or to the limit.

    Recorded by the limiter with the counts that triggered it. At the limit
    the session admits no more steps and, as its policy says, is parked
    (paused, in the operator's inbox) or cancelled: a `control.requested`
    follows from `requested_by` onceflow:limits.
    """

    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    limit: SessionLimitName
    threshold: SessionLimitThreshold
    used: str = Field(description="what the session has used, with what is held for running "
                      "steps (a count, tokens, USD or ms)")
    maximum: str = Field(description="the limit")
    on_limit: SessionLimitPolicy = "park"
    detail: str = ""
    steps: int = Field(default=0, ge=0)
    attempts: int = Field(default=0, ge=0)
    llm_calls: int = Field(default=0, ge=0)


class SessionLimitsSet(Event, event_type="flow.session.limits.set"):
    """An operator's command: a session's execution limits are now these (a raise, usually).

    A parked session that the new limits leave room for is resumed.
    """

    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    session_limits: SessionLimits
    requested_by: str = Field(min_length=1, description="the actor: who asked")
    reason: str = ""


class SessionLimitsChanged(Event, event_type="flow.session.limits.changed"):
    """The limiter took a session's new limits (the fact of `SessionLimitsSet`)."""

    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    session_limits: SessionLimits
    requested_by: str
    reason: str = ""
    resumed: bool = Field(default=False, description="the session was parked at a limit and "
                          "the new ones leave room: it is resumed")


class SlotQueued(Event, event_type="flow.slot.queued"):
    """No slot now: the request waits in order. Names the full scope, its count and limit."""

    attempt_index: int = Field(ge=1)
    scopes: list[str] = Field(default_factory=list)
    scope: str = Field(description="the first of the unit's scopes that is full")
    in_use: int = Field(ge=0)
    limit: int = Field(ge=0)
    position: int = Field(default=0, ge=0, description="the request's place in the queue")
    priority: Priority = "p2"
    fair_start: float = Field(default=0.0, description="weighted fair queuing: its start tag")
    fair_finish: float = Field(
        default=0.0, description="and its finish tag: within a priority, lower goes first")
    detail: str = Field(default="", description="the rule that holds it, with its numbers")
    hold_usd: Amount = Field(default=Decimal("0"), description="as requested (SlotRequested)")
    session_budget_usd: Amount | None = None
    tokens: int = Field(default=0, ge=0)
    budgeted: bool = Field(default=False, description="its tenant has prepaid credit")
    kind: WorkKind = "cpu"
    session_limits: SessionLimits | None = None
    session_tokens: int = Field(default=0, ge=0)


class SlotReleased(Event, event_type="flow.slot.released"):
    """A unit gives its slots back: it ended, was cancelled, or its attempt's lease ran out."""

    reason: SlotReleaseReason


class RetryRequested(Event, event_type="flow.retry.requested"):
    """An attempt failed with an error its tenant's retry budget pays for: before the next
    attempt is scheduled, the scheduler asks the limiter, the one writer of every tenant's
    budget (Krako 2.0: 40 retries, refilled 20 a minute), for a retry."""

    attempt_index: int = Field(ge=1, description="the attempt that failed")
    error_code: str = Field(description="why it failed (a retryable error)")


class RetryGranted(Event, event_type="flow.retry.granted"):
    """The limiter took one retry from the tenant's budget: the next attempt may follow."""

    attempt_index: int = Field(ge=1, description="the attempt that failed")
    error_code: str = ""
    budget_left: float = Field(description="the tenant's retry budget after this retry (it "
                               "refills in logged time from here)")


class RetryDenied(Event, event_type="flow.retry.denied"):
    """The tenant's retry budget is spent: the unit fails for good (retry_budget_exhausted)."""

    attempt_index: int = Field(ge=1, description="the attempt that failed")
    error_code: str = ""
    budget_left: float = Field(description="what the budget held: less than one retry")
    reason: str = ""


class WorkUnitCancelled(Event, event_type="workunit.cancelled"):
    """The unit is cancelled: nothing it reports afterwards is accepted.

    When it was running, its node is told too (the fact goes to the node's
    dispatch partition) and its agent stops the handler cooperatively.
    """

    reason: str = ""
    requested_by: str = ""
    node_id: str = Field(default="", description="the node running it, told to stop ('' none)")
    control_id: str = Field(default="", description="the control that cancelled it, if any")
    attempt_index: int = Field(
        default=0, ge=0, description="the attempt running when it was cancelled (0: none): "
        "what it spent before it stopped is billed, as work done")


# --- claims -----------------------------------------------------------------


class ClaimRequested(Event, event_type="workunit.claim.requested"):
    node_id: str
    attempt_index: int = Field(ge=1)
    scheduling_epoch: int = 0
    incarnation: str = Field(
        default="", description="which run of the node's agent asks; a restarted agent differs"
    )


class ClaimGranted(Event, event_type="workunit.claim.granted"):
    """A claim the scheduler granted: the claim record of Krako 2.0 (unit, nodes, dispatch)."""

    node_id: str = Field(description="the node that claimed")
    attempt_index: int = Field(ge=1)
    lease_expires_at: int = 0
    idempotency_key: str | None = None
    incarnation: str = ""
    selected_node_id: str = Field(default="", description="the node the scheduler selected")
    dispatch_event_id: str = Field(
        default="", description="the `workunit.scheduled` fact that dispatched this attempt")


class ClaimRejected(Event, event_type="workunit.claim.rejected"):
    """A claim the scheduler refused, naming the node it selected (if any) beside the claimant."""

    node_id: str = Field(description="the node that claimed")
    attempt_index: int = Field(ge=1)
    reason_code: ClaimRejectionReason
    incarnation: str = ""
    selected_node_id: str = Field(
        default="", description="the node the scheduler selected ('' for an unknown unit)")
    dispatch_event_id: str = Field(
        default="", description="the `workunit.scheduled` fact of the unit's current attempt")


class EffectStaged(Event, event_type="effect.staged"):
    node_id: str
    attempt_index: int = Field(ge=1)
    idempotency_key: str | None = None
    description: str = ""
    intent_ref: ContentRef | None = None


# --- LLM ----------------------------------------------------------------------


class LlmInvocationCompleted(Event, event_type="llm.invocation.completed"):
    node_id: str
    attempt_index: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    provider: str
    model: str
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    latency_ms: int = Field(ge=0)
    estimated_cost_usd: Amount
    response_ref: ContentRef | None = None


class LlmInvocationFailed(Event, event_type="llm.invocation.failed"):
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


class NodeHeartbeat(Event, event_type="node.heartbeat"):
    ENTITY_FIELD: ClassVar[str] = "node_id"
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
    incarnation: str = Field(
        default="", description="which run of the node's agent: a new one means a restart")


class TrustScoreUpdated(Event, event_type="trust.score.updated"):
    ENTITY_FIELD: ClassVar[str] = "node_id"
    node_id: str
    trust_score: float
    previous_score: float = 0.5
    alpha: float = 2.0
    beta: float = 2.0
    timeout_penalty: float = 0.0
    health_penalty: float = 0.0
    quarantined: bool = Field(
        default=False, description="the breaker is open (what release-1 readers filter on)")
    reason: TrustReason | Literal[""] = ""
    reliability: float = Field(default=0.5, description="alpha / (alpha + beta)")
    health_status: str = "healthy"
    outcome: TrustOutcome | Literal[""] = Field(
        default="", description="what moved the score: success, failure, timeout or heartbeat")
    source_event_id: str = ""
    previous_alpha: float = 2.0
    previous_beta: float = 2.0
    previous_timeout_penalty: float = 0.0
    previous_at: int = Field(default=0, description="logged time of the previous update, ms")
    previous_quarantined: bool = False
    breaker: BreakerState = Field(
        default="closed", description="the node's circuit breaker after this update")
    breaker_until: int = Field(
        default=0, description="when an open breaker turns half-open (logged time, ms)")
    breaker_probes_ok: int = Field(default=0, description="half-open: probes that succeeded")
    breaker_buckets: list[BreakerBucket] = Field(
        default_factory=list, description="closed: the attempts its windows count, by bucket")
    incarnation: str = Field(default="", description="the agent run the node's heartbeats name")


# --- capacity -----------------------------------------------------------------


class QueueSampled(Event, event_type="scheduler.queue.sampled"):
    """One scheduler partition's queue, sampled on its clock: the autoscaler's input.

    `queue` is the work waiting for capacity (deferred for want of a node,
    scheduled and not yet claimed, waiting to be retried); units held back by
    THROTTLED admission are counted apart (`throttled`), so that throttling
    does not keep itself going. Node figures come from the scheduler's view of
    the heartbeats at the time, recorded because that view is a global table.
    """

    ENTITY_FIELD: ClassVar[str] = "event_type"
    partition: int = Field(default=0, ge=0)
    queue: int = Field(default=0, ge=0)
    deferred: int = Field(default=0, ge=0)
    throttled: int = Field(default=0, ge=0)
    running: int = Field(default=0, ge=0)
    wait_p95_ms: float = Field(default=0.0, ge=0)
    waits_sampled: int = Field(default=0, ge=0)
    node_count: int = Field(default=0, ge=0)
    utilization: float = Field(default=0.0, ge=0)
    admission_mode: AdmissionMode = "OPEN"


class CapacityWindowClosed(Event, event_type="capacity.window.closed"):
    """The autoscaler closed a window: its metrics, the rule streaks after it, and why.

    The record a scaling or mode decision is re-checked from.
    """

    ENTITY_FIELD: ClassVar[str] = "event_type"
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
    mode: AdmissionMode = "OPEN"
    previous_up_streak: int = 0
    previous_down_streak: int = 0
    previous_critical_streak: int = 0
    previous_open_streak: int = 0
    previous_replicas: int = 1
    previous_mode: AdmissionMode = "OPEN"
    last_scale_up_at: int = 0
    last_scale_down_at: int = 0
    previous_last_scale_up_at: int = 0
    previous_last_scale_down_at: int = 0
    decision: str = Field(default="", description="scale_up, scale_down, a mode change, or "
                                                  "empty")


class CapacityScaleRequested(Event, event_type="capacity.scale.requested"):
    ENTITY_FIELD: ClassVar[str] = "event_type"
    previous_replicas: int
    new_replicas: int
    reason: str
    queue_depth: int = 0
    wait_p95_ms: float = 0.0
    utilization: float = 0.0
    window_start: int = 0
    window_end: int = 0


class CapacityAdmissionModeChanged(Event, event_type="capacity.admission.mode.changed"):
    ENTITY_FIELD: ClassVar[str] = "event_type"
    previous_mode: AdmissionMode
    new_mode: AdmissionMode
    reason: str
    queue_depth: int = 0
    wait_p95_ms: float = 0.0
    utilization: float = 0.0
    window_start: int = 0
    window_end: int = 0


# --- billing ------------------------------------------------------------------


class LedgerLineItem(Event, event_type="ledger.line_item"):
    line_item_id: str
    source_event_id: str
    source_event_type: str
    correlation_id: str | None = None
    line_item_type: LineItemType
    node_id: str | None = None
    model: str | None = None
    cpu_seconds: Amount = Decimal("0")
    llm_tokens: int = 0
    llm_tokens_event_total: int = 0
    cpu_unit_price_usd: Amount = Decimal("0")
    llm_unit_price_usd_per_1k: Amount = Decimal("0")
    subtotal_cpu_usd: Amount = Decimal("0")
    subtotal_llm_usd: Amount = Decimal("0")
    total_usd: Amount
    currency: str = "USD"
    rounded_scale: int = 6
    rounding_mode: str = "ROUND_HALF_EVEN"
    pricing_version: str
    billed: bool = True
    attempt_index: int = Field(default=0, ge=0, description="the attempt the source belongs to")
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    llm_input_price_usd_per_1k: Amount = Decimal("0")
    llm_output_price_usd_per_1k: Amount = Decimal("0")
    subtotal_llm_input_usd: Amount = Decimal("0")
    subtotal_llm_output_usd: Amount = Decimal("0")
    leakage_reason: str = Field(
        default="", description="why an unbilled line item was not charged (billed = false)"
    )


class LedgerChargeHeld(Event, event_type="ledger.charge.held"):
    """An LLM invocation priced and waiting for its unit to settle.

    Only the accepted attempt's invocations are charged, and which attempt
    that is is known only at settlement, which may come before or after the
    invocation. The ledger records the hold as a fact (its changelog), so a
    restarted ledger knows what it is holding.
    """

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
    llm_input_price_usd_per_1k: Amount = Decimal("0")
    llm_output_price_usd_per_1k: Amount = Decimal("0")
    pricing_version: str = ""


class LedgerUnitSettled(Event, event_type="ledger.unit.settled"):
    """The ledger learned how a unit ended: which attempt, if any, may be charged.

    Invocations that arrive after this are decided at once (billed when they
    belong to the accepted attempt, leakage otherwise); ones held before it
    are decided in the same decision.
    """

    outcome: LedgerOutcome
    accepted_attempt: int = Field(
        default=0, ge=0, description="the attempt whose work is charged: the accepted one, or "
        "the one a cancel stopped (its tokens were spent); 0 when none")
    source_event_id: str = ""
    settlement_reason: SettlementReason = ""


class WalletUpdated(Event, event_type="wallet.updated"):
    ENTITY_FIELD: ClassVar[str] = "tenant_id"
    balance_usd: Money
    total_debit_usd: Amount
    total_credit_usd: Amount
    record_count: int = 0
    last_line_item_id: str | None = None
    wallet_id: str = Field(
        default="", description="tenant:{tenant} or session:{tenant}/{session} (its scope; "
        "releases before 6: session:{tenant}:{session}), with @{partition}"
    )
    scope: Literal["tenant", "session"] = "tenant"
    ledger_partition: int = Field(
        default=0, ge=0,
        description="the ledger partition this partial wallet folds; a wallet is the sum of "
                    "its partials, one per ledger partition",
    )
    prepaid: bool = Field(default=False, description="a prepaid credit limits this tenant")
    total_leakage_usd: Amount = Decimal("0")
    leakage_count: int = 0


class BillingAnomaly(Event, event_type="billing.anomaly"):
    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    check: str
    severity: Literal["info", "warning", "flag"] = "flag"
    subject_id: str = ""
    expected: str = ""
    observed: str = ""
    message: str = ""


class ViewDefined(Event, event_type="view.defined"):
    """A ksql-style view over the ledger was created or dropped.

    Kept on a compacted topic keyed by the view's name, so every replica of
    the views processor, and every restart, holds the same views.
    """

    ENTITY_FIELD: ClassVar[str] = "view_name"
    view_name: str
    kind: Literal["table", "stream"] = "table"
    statement: str = Field(default="", description="the statement as the user wrote it")
    query_sql: str = Field(default="", description="the SELECT it runs, in DuckDB's dialect")
    windowed: bool = False
    dropped: bool = False


# --- control ------------------------------------------------------------------


class ControlSessionPaused(Event, event_type="control.session.paused"):
    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    requested_by: str = ""
    reason: str = ""


class ControlSessionResumed(Event, event_type="control.session.resumed"):
    ENTITY_FIELD: ClassVar[str] = "execution_session_id"
    requested_by: str = ""
    reason: str = ""


class ControlSessionCancelRequested(Event, event_type="control.cancel.requested"):
    requested_by: str = ""
    reason: str = ""


class ControlRequested(Event, event_type="control.requested"):
    """An operator's command: pause, resume or cancel a unit, a session, a tenant or the queue.

    The target is the envelope: `work_unit_id` (unit), `tenant_id` and
    `execution_session_id` (session), `tenant_id` (tenant), nothing (queue).
    A command, not a fact: each scheduler partition records what it did with
    it (`control.applied`).
    """

    action: ControlAction
    scope: ControlScope
    requested_by: str = Field(min_length=1, description="the actor: who asked")
    reason: str = ""
    broadcast: bool = Field(
        default=True, description="as asked; a partition's copy sent on to the others is not")


class ControlApplied(Event, event_type="control.applied"):
    """What one scheduler partition did with a control, with its counts: the record that the
    control happened, who asked, why, and what came of it."""

    control_id: str = Field(description="the control.requested event")
    action: ControlAction
    scope: ControlScope
    target: str = Field(description="queue, tenant:<t>, session:<t>/<s> or unit:<id>")
    requested_by: str
    reason: str = ""
    outcome: ControlOutcome
    detail: str = ""
    partition: int = Field(default=0, ge=0)
    cancelled: int = Field(default=0, ge=0, description="units cancelled while queued")
    stopping: int = Field(default=0, ge=0, description="running units cancelled, nodes told")
    resumed: int = Field(default=0, ge=0, description="paused units placed again")


class ControlHumanInputSubmitted(Event, event_type="control.human_input.submitted"):
    """A person's answer to an input step (`work_unit_id`), stored in the content store."""

    prompt_id: str
    input_ref: ContentRef | None = None
    text: str | None = None
    submitted_by: str = ""
    schema_error: str = Field(
        default="", description="what the client found wrong with the answer against the "
        "step's schema: the step refuses it and keeps waiting ('' none)")


class ControlOperatorResolved(Event, event_type="control.operator.resolved"):
    resolution: Literal["retry", "mark_done", "abandon"]
    result_ref: ContentRef | None = None
    operator: str = ""
    note: str = ""


class ClockTick(Event, event_type="clock.tick"):
    """Time entering the log: reducers never read the wall clock."""

    ENTITY_FIELD: ClassVar[str] = "event_id"
    partition: int = 0
    sequence: int = 0


# --- the processor runtime ----------------------------------------------------


class DecisionClosed(Event, event_type="processor.decision.closed",
                     avro_name="ProcessorDecisionClosed"):
    """The end of a decision whose facts were only partly written before a crash.

    A processor that re-decides an input after a crash normally repeats the
    facts already in its log byte for byte and writes the rest. When the new
    decision differs (it read something outside the partition's log, such as
    a global table), the facts in the log stand: the written part becomes
    the whole decision, and this event, its last fact, says so. No fact id is
    written twice and no reader sees two versions of one. Reducers never see
    it; the shell folds it.
    """

    processor: str
    facts_kept: int = Field(ge=0)
    reason: str = ""


class StateRetired(Event, event_type="processor.state.retired"):
    """Working state a processor partition drops: settled units, idle sessions.

    State that only grows is what a long-running deployment hits first. A
    unit that settled more than the retention horizon ago (in logged time) is
    forgotten by the processor that decided it: its record and index entries
    go, while every fact about it stays in the log; so is a session's account
    with the limiter once it has been idle a horizon. It is a fact like any
    other, so replay drops the same state at the same point. `inputs_until`
    is the newest submission time among the units: a submission that old, of a
    unit the scheduler does not know, cannot be told from a redelivery of one
    of them, so it is refused. The ledger and the anomaly checker forget what
    the scheduler forgets: its fact comes after every fact of the units in the
    partition they read in order.
    """

    processor: str
    horizon_ms: int = Field(ge=1)
    inputs_until: int = Field(ge=0)
    #: oldest first; empty when a check found nothing to forget (the ledger records
    #: each check, so that it looks again only a step of logged time later)
    work_unit_ids: list[str]
    #: idle sessions' accounts, as "tenant/session"
    sessions: list[str] = Field(default_factory=list)


# --- dead letters -------------------------------------------------------------


class DeadLetterRecorded(Event, event_type="deadletter.recorded"):
    """How a dead letter reads once its headers are decoded.

    The dead-letter topic keeps the failed record's bytes unchanged; this
    model is the readable view `onceflow tail` builds from them and their
    origin headers.
    """

    ENTITY_FIELD: ClassVar[str] = "event_id"
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
    WorkUnitResultReported,
    WorkUnitFailed,
    WorkUnitFailureReported,
    WorkUnitAttemptFailed,
    WorkUnitAttemptStopped,
    WorkUnitNeedsOperator,
    WorkUnitCancelled,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitDependencyProbe,
    ProviderScopePaused,
    SlotRequested,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotDenied,
    BudgetSettled,
    SessionLimitCrossed,
    SessionLimitsSet,
    SessionLimitsChanged,
    RetryRequested,
    RetryGranted,
    RetryDenied,
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
    ControlRequested,
    ControlApplied,
    ControlHumanInputSubmitted,
    ControlOperatorResolved,
    ClockTick,
    DecisionClosed,
    StateRetired,
    DeadLetterRecorded,
)
