"""Reason codes: the closed vocabularies the scheduler and the ledger decide with.

On the wire they are Avro strings (a new code never breaks an older reader);
in Python they are `Literal`s, so a misspelt code is a type error and a
reader can match on every case.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CONTROL_NOT_TAKEN",
    "RESEND_REJECTIONS",
    "SETTLED_WITHOUT_RUNNING",
    "BreakerState",
    "ClaimRejectionReason",
    "ControlAction",
    "ControlOutcome",
    "ControlScope",
    "DeferralReason",
    "DenialReason",
    "LedgerOutcome",
    "LineItemType",
    "NeedsOperatorReason",
    "PlacementReason",
    "RejectionReason",
    "RetryReason",
    "SessionFailurePolicy",
    "SessionLimitName",
    "SessionLimitThreshold",
    "SettlementReason",
    "SlotReleaseReason",
    "TrustOutcome",
    "TrustReason",
    "rejection_ends_unit",
]

#: why a node was chosen (the alternatives were recorded beside it)
PlacementReason = Literal["best_score", "anti_affinity", "quarantine_fallback"]
#: why a unit waits: admission throttled, parents not done, no node can take it now
DeferralReason = Literal["throttled", "waiting_on_parents", "no_eligible_node",
                         "provider_paused", "concurrency_limited", "rate_limited",
                         "budget_wait", "paused", "awaiting_approval", "awaiting_input"]
#: what an operator's control acts on: one unit, a session, a tenant, or the whole queue
ControlScope = Literal["unit", "session", "tenant", "queue"]
#: what an operator's control does
ControlAction = Literal["pause", "resume", "cancel", "approve", "deny", "answer", "resolve"]
#: what a scheduler partition did with a control: acted on units, found none of the
#: scope's units here, refused it (and said why), or found no such unit of the acting
#: tenant (another tenant's unit answers the same as one that does not exist)
ControlOutcome = Literal["applied", "none_here", "refused", "not_found"]
#: outcomes of a control that changed nothing, with why in its detail
CONTROL_NOT_TAKEN: frozenset[str] = frozenset({"refused", "not_found"})
#: why the limiter refused a request for good
DenialReason = Literal["BUDGET_EXCEEDED", "SESSION_LIMIT"]
#: why a submission was refused for good
RejectionReason = Literal["duplicate_id_different_payload", "BUDGET_EXCEEDED", "critical_mode",
                          "session_budgets_off", "depends_on_cycle", "beyond_horizon",
                          "effect_unsupported"]
#: rejections that answer a resend of a unit's id (another payload under a known id, or a
#: submission older than the units the scheduler has forgotten)
RESEND_REJECTIONS: frozenset[str] = frozenset({"duplicate_id_different_payload",
                                               "beyond_horizon"})


def rejection_ends_unit(reason_code: str, unit_known: bool) -> bool:
    """Whether a reader of the scheduler's facts takes a rejection as its unit's end.

    Always, unless it answers a resend of a unit the reader already knows: that
    unit stays as it was. `beyond_horizon` may also refuse a new submission
    older than the retention horizon; a reader that never saw the unit
    admitted takes that refusal as its end.
    """
    return reason_code not in RESEND_REJECTIONS or not unit_known


#: a session's execution limits (`SessionLimits`)
SessionLimitName = Literal["max_steps", "max_attempts", "max_llm_calls", "max_tokens",
                           "max_cost_usd", "max_wall_time_ms"]
#: how close a session came: 80 % of a limit (a warning) or the limit itself
SessionLimitThreshold = Literal["warning", "reached"]
#: what a failed step does to the rest of its session: only its dependents fail
#: (continue), or the whole session is cancelled (fail_fast)
SessionFailurePolicy = Literal["continue", "fail_fast"]
#: why another attempt follows
RetryReason = Literal["retryable_error", "operator_retry", "provider_backoff"]
#: why a unit waits for an operator
NeedsOperatorReason = Literal["unsafe_to_retry"]
#: why a claim was refused
ClaimRejectionReason = Literal[
    "unknown_unit", "stale_attempt", "already_granted", "not_claimable", "not_selected_node",
    "paused"]
#: how a reported result was settled: accepted (`grant_holder`, `operator_mark_done`)
#: or refused (the rest); "" only on results written before the report had its own type
SettlementReason = Literal[
    "grant_holder", "operator_mark_done", "unknown_unit", "already_settled", "stale_attempt",
    "not_grant_holder", "lease_expired", "human_input", "input_default", ""]
#: settlements of a unit that ran nowhere: an operator's result, a person's answer, an
#: input step's default (no attempt was granted, and none needs to be)
SETTLED_WITHOUT_RUNNING: frozenset[str] = frozenset({"operator_mark_done", "human_input",
                                                     "input_default"})
#: what moved a node's trust score
TrustOutcome = Literal["success", "failure", "timeout", "heartbeat"]
#: a node's circuit breaker: closed (work flows), open (none, for a while),
#: half_open (one probe unit at a time, until enough succeed)
BreakerState = Literal["closed", "open", "half_open"]
#: why a trust score was published: its outcome, a breaker that changed state, an
#: agent restarted under the node's id; quarantined / released only in records
#: written before the breaker replaced quarantine
TrustReason = Literal[
    "success", "failure", "timeout", "heartbeat", "breaker_opened", "breaker_half_open",
    "breaker_closed", "restarted", "quarantined", "released"]
#: why a unit gave its concurrency slots back
SlotReleaseReason = Literal["completed", "failed", "cancelled", "attempt_ended",
                            "needs_operator", "rejected"]
#: how the ledger learned a unit ended
LedgerOutcome = Literal["accepted", "failed", "cancelled"]
#: what a ledger line item charges for
LineItemType = Literal["workunit_cpu", "llm_tokens"]
