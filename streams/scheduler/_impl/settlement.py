"""Claims and settlement: who may run an attempt, and whose result becomes the unit's.

A claim is granted only to the node the scheduler selected, for the current
attempt; a result is accepted only from the attempt that holds the grant
(node, attempt and agent incarnation). Everything else is fenced: refused,
and recorded as refused so the ledger can show what it cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from onceflow.schemas import (
    AttemptFailure,
    AttemptResult,
    ClaimGranted,
    ClaimRejected,
    ClaimRejectionReason,
    ClaimRequested,
    EffectStaged,
    Event,
    RetryDenied,
    RetryGranted,
    RetryRequested,
    SettlementReason,
    WorkUnitAttemptFailed,
    WorkUnitAttemptStopped,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitFailureReported,
    WorkUnitNeedsOperator,
    WorkUnitResultReported,
    WorkUnitRetryScheduled,
    retry_is_safe,
)
from onceflow.streams.ids import caused_by, idempotency_key_for, restated
from onceflow.streams.scheduler._impl.admission import deferred
from onceflow.streams.scheduler._impl.backoff import BACKOFF, on_backoff
from onceflow.streams.scheduler._impl.context import SchedulerContext
from onceflow.streams.scheduler._impl.dependencies import notify_dependents
from onceflow.streams.scheduler._impl.pauses import paused_by
from onceflow.streams.scheduler._impl.retry import retry_delay_ms
from onceflow.streams.scheduler._impl.slots import release_on_completion, release_slots
from onceflow.streams.scheduler._impl.unit import UnitRecord
from onceflow.streams.types import Routed, State

__all__ = [
    "attempt_ended",
    "evolve_attempt_failed",
    "evolve_attempt_stopped",
    "evolve_completed",
    "evolve_failed",
    "evolve_granted",
    "evolve_needs_operator",
    "evolve_retry_requested",
    "evolve_retry_scheduled",
    "evolve_staged",
    "on_claim",
    "on_failure_reported",
    "on_legacy_completed",
    "on_legacy_failure",
    "on_reported",
    "on_retry_denied",
    "on_retry_granted",
    "on_staged",
    "route_attempt_outcome",
    "route_claim_answer",
]


#: what an attempt produced, as the report and its settlement both carry it
_RESULT_FIELDS = frozenset(AttemptResult.model_fields) - frozenset(Event.model_fields)


def _result_of(event: AttemptResult) -> dict[str, Any]:
    return {name: getattr(event, name) for name in _RESULT_FIELDS}


def _holds_grant(unit: UnitRecord | None, attempt: int, node: str, incarnation: str) -> bool:
    return (
        unit is not None and unit.status == "granted" and unit.attempt == attempt
        and unit.node == node and unit.incarnation == incarnation
    )


def on_claim(ctx: SchedulerContext, state: State, event: ClaimRequested) -> Sequence[Event]:
    wu = event.work_unit_id or ""
    unit = ctx.load(state, wu)
    reason: ClaimRejectionReason | None = None
    if unit is None:
        reason = "unknown_unit"
    elif event.attempt_index != unit.attempt:
        reason = "stale_attempt"
    elif unit.status == "granted":
        reason = "already_granted"
    elif unit.status != "scheduled":
        reason = "not_claimable"
    elif event.node_id != unit.node:
        reason = "not_selected_node"
    elif (holder := paused_by(state, unit)) is not None:
        # paused after it was placed: no grant; it waits for the resume
        reason = "paused"
    if reason is not None:
        envelope = (caused_by(event, f"claim-rejected:{wu}") if unit is None
                    else ctx.envelope(unit, event, "claim-rejected", event.occurred_at))
        rejected = ClaimRejected(
            **envelope, node_id=event.node_id, attempt_index=event.attempt_index,
            reason_code=reason, incarnation=event.incarnation,
            selected_node_id=unit.node if unit else "",
            dispatch_event_id=unit.dispatch_event_id if unit else "",
        )
        if reason == "paused" and unit is not None:
            ctx.view.note_arrived(event.node_id, unit.work_unit_id)
            return (rejected, deferred(ctx, unit, event, event.occurred_at, "paused",
                                       f"{holder} is paused by an operator"))
        return (rejected,)
    assert unit is not None
    now = max(event.occurred_at, unit.decided_at)
    ctx.view.note_arrived(event.node_id, unit.work_unit_id, claimed_at=event.occurred_at)
    return (ClaimGranted(
        **ctx.envelope(unit, event, "claim-granted", now),
        node_id=event.node_id, attempt_index=event.attempt_index,
        lease_expires_at=now + unit.spec.lease_ms + unit.spec.simulated_ms,
        idempotency_key=idempotency_key_for(wu), incarnation=event.incarnation,
        selected_node_id=unit.node, dispatch_event_id=unit.dispatch_event_id,
    ),)


def on_staged(ctx: SchedulerContext, state: State, event: EffectStaged) -> Sequence[Event]:
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "granted" or unit.attempt != event.attempt_index:
        return ()
    if unit.staged:
        return ()
    return (restated(event, "staged"),)


def on_reported(ctx: SchedulerContext, state: State, event: WorkUnitResultReported
                ) -> Sequence[Event]:
    """Settle a reported result: accepted from the grant holder, refused (and said why) else."""
    unit = ctx.load(state, event.work_unit_id or "")
    reason: SettlementReason
    if unit is None:
        reason = "unknown_unit"
    elif unit.terminal:
        reason = "already_settled"
    elif unit.attempt != event.attempt_index:
        reason = "stale_attempt"
    elif not _holds_grant(unit, event.attempt_index, event.node_id, event.incarnation):
        reason = "not_grant_holder" if unit.status == "granted" else "lease_expired"
    else:
        reason = "grant_holder"
    accepted = reason == "grant_holder"
    settled = WorkUnitCompleted(
        **caused_by(event, "settled"), **_result_of(event), selected_node_id=event.node_id,
        accepted=accepted, settlement_reason=reason,
        submitted_at=unit.submitted_at if unit else 0,
    )
    if not accepted or unit is None:
        return (settled,)
    # its slots go back with the settlement itself (see `slots.release_on_completion`)
    return [settled, *notify_dependents(ctx, state, unit, event, event.occurred_at, "completed",
                               event.result_ref)]


def on_legacy_completed(ctx: SchedulerContext, state: State, event: WorkUnitCompleted
                        ) -> Sequence[Event]:
    """A result reported by an agent of release 1, which reported as `workunit.completed`.

    A settlement (ours, with its reason) is never an input; a v1 report has no
    reason yet and is settled as the report it is, under the ids it had then.
    """
    if event.accepted or event.settlement_reason:
        return ()
    report = WorkUnitResultReported(
        event_id=event.event_id, occurred_at=event.occurred_at, tenant_id=event.tenant_id,
        execution_session_id=event.execution_session_id, work_unit_id=event.work_unit_id,
        causation_id=event.causation_id, **_result_of(event), node_id=event.selected_node_id,
    )
    return on_reported(ctx, state, report)


#: what an agent's report of a failed attempt says, as the scheduler's facts restate it
_FAILURE_FIELDS = frozenset(AttemptFailure.model_fields) - set(Event.model_fields)


def _failure_of(report: WorkUnitFailureReported) -> dict[str, Any]:
    return {name: getattr(report, name) for name in sorted(_FAILURE_FIELDS)}


def on_failure_reported(ctx: SchedulerContext, state: State, event: WorkUnitFailureReported
                        ) -> Sequence[Event]:
    """An agent's word that its attempt ended without a result: the attempt a cancel stopped
    (recorded once), a provider's "later", or a failed attempt to recover from."""
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is not None and unit.status == "cancelled" and unit.incarnation and (
            unit.attempt, unit.node, unit.incarnation) == (
            event.attempt_index, event.node_id, event.incarnation):
        # the attempt a cancel stopped, stopping: recorded once, so the ledger bills the
        # work it did before the cancel (its CPU; its tokens were reported on their own)
        return (WorkUnitAttemptStopped(**caused_by(event, "stopped-after-cancel"),
                                       **_failure_of(event), selected_node_id=event.node_id),)
    if unit is None or not _holds_grant(unit, event.attempt_index, event.node_id,
                                        event.incarnation):
        return ()  # a fenced attempt's failure changes nothing
    if event.error_code == BACKOFF:
        return on_backoff(ctx, state, unit, event)
    return attempt_ended(ctx, state, unit, event, event.occurred_at, event.error_code,
                         event.error_reason, reported=event)


def on_legacy_failure(ctx: SchedulerContext, state: State,
                      event: WorkUnitAttemptFailed | WorkUnitAttemptStopped) -> Sequence[Event]:
    """A failure reported by an agent of a release before 6, which reported as
    `workunit.failed` (the decoder hands it over as its meaning's type). The scheduler's
    own facts are never its input, so one of these as an input is such a report."""
    report = WorkUnitFailureReported(
        event_id=event.event_id, occurred_at=event.occurred_at, tenant_id=event.tenant_id,
        execution_session_id=event.execution_session_id, work_unit_id=event.work_unit_id,
        causation_id=event.causation_id, **{n: getattr(event, n) for n in _FAILURE_FIELDS},
        node_id=event.selected_node_id)
    return on_failure_reported(ctx, state, report)


def attempt_ended(
    ctx: SchedulerContext, state: State, unit: UnitRecord, cause: Event, now: int,
    error_code: str, error_reason: str, reported: WorkUnitFailureReported | None = None,
) -> list[Event]:
    """An attempt that held the grant ended without a result (`reported` by its agent, or
    None: its lease ran out): recover by effect label. The attempt's failure is recorded,
    then what follows it: a retry (asked of the tenant's budget when it pays for it), an
    operator's inbox, or the unit's failure for good."""
    spec = unit.spec
    failures = unit.failures + 1
    retryable = error_code in ctx.cfg.retryable_errors
    unsafe = not retry_is_safe(spec.effect, spec.idempotency_class, unit.staged)
    failed = WorkUnitAttemptFailed(
        **ctx.envelope(unit, cause, "attempt-failed", now), selected_node_id=unit.node,
        attempt_index=unit.attempt, correlation_id=spec.correlation_id, error_code=error_code,
        error_reason=error_reason, retryable=retryable, incarnation=unit.incarnation,
        lease_expired=reported is None,
        cpu_seconds=reported.cpu_seconds if reported is not None else Decimal(0),
    )
    released = release_slots(ctx, unit, cause, now, "attempt_ended")
    if unsafe:
        return [failed, *released, WorkUnitNeedsOperator(
            **ctx.envelope(unit, cause, "needs-operator", now),
            attempt_index=unit.attempt, selected_node_id=unit.node,
            effect=spec.effect, idempotency_class=spec.idempotency_class,
            reason_code="unsafe_to_retry",
            reason=f"{error_code}: a world-mutating effect was staged and its idempotency "
                   f"class '{spec.idempotency_class}' does not make a retry safe; "
                   "resolve with retry, mark_done or abandon",
        )]
    if not retryable or failures >= spec.max_attempts:
        code = "non_retryable_error" if not retryable else "attempt_cap_exceeded"
        return [failed, *released, _failed_for_good(ctx, unit, cause, now, error_code,
                                                     f"{code}: {error_reason}".strip(": "),
                                                     retryable),
                *notify_dependents(ctx, state, unit, cause, now, "failed", None)]
    if spends_retry_budget(error_code):
        # The tenant's retry budget spans every partition: its one writer, the limiter,
        # decides (`on_retry_granted`, `on_retry_denied`).
        return [failed, *released, RetryRequested(
            **ctx.envelope(unit, cause, "retry-asked", now), attempt_index=unit.attempt,
            error_code=error_code)]
    return [failed, *released, _retry(ctx, unit, cause, now, failures, error_code)]


def _retry(ctx: SchedulerContext, unit: UnitRecord, cause: Event, now: int, failures: int,
           error_code: str) -> WorkUnitRetryScheduled:
    """The next attempt, after the backoff of the unit's `failures`-th failure."""
    delay = retry_delay_ms(unit.work_unit_id, failures, ctx.cfg)
    return WorkUnitRetryScheduled(
        **ctx.envelope(unit, cause, "retry", now), attempt_index=unit.attempt + 1,
        delay_ms=delay, retry_at=now + delay, error_code=error_code,
        reason_code="retryable_error",
    )


def _asked_for_retry(ctx: SchedulerContext, state: State, event: RetryGranted | RetryDenied
                     ) -> UnitRecord | None:
    """The unit whose failed attempt the limiter answered, if it still waits for the word
    (a cancel may have ended it meanwhile)."""
    unit = ctx.load(state, event.work_unit_id or "")
    if unit is None or unit.status != "retry_pending" or unit.attempt != event.attempt_index:
        return None
    return unit


def on_retry_granted(ctx: SchedulerContext, state: State, event: RetryGranted
                     ) -> Sequence[Event]:
    unit = _asked_for_retry(ctx, state, event)
    if unit is None:
        return ()
    return (_retry(ctx, unit, event, event.occurred_at, unit.failures, event.error_code),)


def on_retry_denied(ctx: SchedulerContext, state: State, event: RetryDenied
                    ) -> Sequence[Event]:
    unit = _asked_for_retry(ctx, state, event)
    if unit is None:
        return ()
    now = event.occurred_at
    return [_failed_for_good(ctx, unit, event, now, event.error_code,
                             f"retry_budget_exhausted: {event.reason}", True),
            *notify_dependents(ctx, state, unit, event, now, "failed", None)]


def _failed_for_good(ctx: SchedulerContext, unit: UnitRecord, cause: Event, now: int,
                     error_code: str, error_reason: str, retryable: bool) -> WorkUnitFailed:
    """The decision that a unit whose last attempt failed has failed for good."""
    return WorkUnitFailed(
        **ctx.envelope(unit, cause, "failed", now), selected_node_id=unit.node,
        attempt_index=unit.attempt, correlation_id=unit.spec.correlation_id,
        error_code=error_code, error_reason=error_reason, retryable=retryable, final=True,
        incarnation=unit.incarnation, reported_by_scheduler=True)


# -- evolve ----------------------------------------------------------------------------


def evolve_granted(ctx: SchedulerContext, state: State, unit: UnitRecord,
                   fact: ClaimGranted) -> UnitRecord:
    return unit.but(status="granted", incarnation=fact.incarnation,
                    deadline=fact.lease_expires_at, decided_at=fact.occurred_at)


def evolve_staged(ctx: SchedulerContext, state: State, unit: UnitRecord,
                  fact: EffectStaged) -> UnitRecord:
    return unit.but(staged=True)


def evolve_completed(ctx: SchedulerContext, state: State, unit: UnitRecord,
                     fact: WorkUnitCompleted) -> UnitRecord | None:
    if not fact.accepted:
        return None
    return unit.but(status="completed", reason=fact.settlement_reason,
                    result_ref=fact.result_ref)


def evolve_failed(ctx: SchedulerContext, state: State, unit: UnitRecord,
                  fact: WorkUnitFailed) -> UnitRecord:
    if unit.status == "cancelled":
        return unit  # a release-5 fact: a cancelled unit's failure changes nothing
    return unit.but(status="failed", reason=fact.error_code)


def evolve_attempt_failed(ctx: SchedulerContext, state: State, unit: UnitRecord,
                          fact: WorkUnitAttemptFailed) -> UnitRecord:
    if fact.error_code == BACKOFF:
        return unit.but(reason=fact.error_code)  # the provider's "later" is not a failure
    return unit.but(failures=unit.failures + 1, reason=fact.error_code)


def evolve_attempt_stopped(ctx: SchedulerContext, state: State, unit: UnitRecord,
                           fact: WorkUnitAttemptStopped) -> UnitRecord:
    return unit.but(incarnation="")  # its stop is recorded: a second report is fenced


def spends_retry_budget(error_code: str) -> bool:
    """Whether retrying after this error spends the tenant's retry budget: an error of the
    work does; a lease that ran out (a node that died or stalled) is not the tenant's."""
    return error_code != "node_timeout"


def evolve_retry_requested(ctx: SchedulerContext, state: State, unit: UnitRecord,
                           fact: RetryRequested) -> UnitRecord:
    # the attempt is over (its late claims and results are fenced: only a `scheduled`
    # unit takes claims, only a `granted` one results); the limiter's word comes next
    return unit.but(status="retry_pending", reason="retry_budget_wait", incarnation="",
                    staged=False, decided_at=fact.occurred_at)


def evolve_retry_scheduled(ctx: SchedulerContext, state: State, unit: UnitRecord,
                           fact: WorkUnitRetryScheduled) -> UnitRecord:
    # The next attempt's number is taken now: only a `scheduled` unit takes
    # claims and only a `granted` one takes results, so the ended attempt's
    # late claims and results are fenced off from here on.
    return unit.but(status="retry_wait", attempt=fact.attempt_index - 1, staged=False,
                    reason=fact.reason_code, incarnation="", retry_at=fact.retry_at)


def evolve_needs_operator(ctx: SchedulerContext, state: State, unit: UnitRecord,
                          fact: WorkUnitNeedsOperator) -> UnitRecord:
    return unit.but(status="needs_operator", reason=fact.reason_code)


# -- route -----------------------------------------------------------------------------


def route_claim_answer(ctx: SchedulerContext, fact: ClaimGranted | ClaimRejected
                       ) -> Sequence[Routed]:
    """The answer to a claim, to the claiming node's dispatch partition."""
    return (Routed(ctx.dispatch.name, fact, ctx.dispatch.partition_of(fact.node_id)),)


def route_attempt_outcome(ctx: SchedulerContext,
                          fact: WorkUnitCompleted | WorkUnitAttemptFailed) -> Sequence[Routed]:
    """How an attempt on a node ended, to that node's partition of `outcomes`: trust
    scoring reads it there beside the node's heartbeats."""
    if isinstance(fact, WorkUnitCompleted):
        if not (fact.accepted and fact.settlement_reason == "grant_holder"):
            return ()
    elif not fact.selected_node_id:
        return ()  # a lease the scheduler ended on no node
    node = fact.selected_node_id
    outcome = Routed(ctx.outcomes.name, fact, ctx.outcomes.partition_of(node))
    if isinstance(fact, WorkUnitCompleted):
        return (outcome, *release_on_completion(ctx, fact))
    return (outcome,)
