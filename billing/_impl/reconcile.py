"""Reconciliation: the checks that need the whole ledger, as a pure function.

The streaming checker proves what one partition can; these compare totals
across partitions, so they run over a read of the topics (`onceflow
anomalies --reconcile`, and the end of the demo):

- `session_total_mismatch`: a session's wallet against the sum of its
  billed line items (absolute difference above 0.000001);
- `session_tokens_mismatch`: tokens the accepted attempts' invocations used
  against the tokens the ledger billed, per session;
- `unresolved_hold`: an invocation still held although its unit settled;
- `cost_spike`: a session costing far more than its tenant's median session.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from onceflow.billing._impl.wallets import Wallet, session_wallet_id
from onceflow.billing.settings import BillingSettings
from onceflow.schemas import (
    BillingAnomaly,
    LedgerChargeHeld,
    LedgerLineItem,
    LedgerUnitSettled,
    LlmInvocationCompleted,
    Scope,
    WalletUpdated,
)
from onceflow.streams.ids import derive_event_id

__all__ = ["BillingRecords", "reconcile"]

_TOLERANCE = Decimal("0.000001")


@dataclass
class BillingRecords:
    """What reconciliation reads: the ledger's facts, the latest partial wallets, invocations."""

    line_items: list[LedgerLineItem] = field(default_factory=list)
    #: line item id -> the ledger partition it was read from (in partition order), so a
    #: partial wallet can be compared with exactly the line items it has folded
    partition_of: dict[str, int] = field(default_factory=dict)
    held: list[LedgerChargeHeld] = field(default_factory=list)
    settled: list[LedgerUnitSettled] = field(default_factory=list)
    wallets: list[WalletUpdated] = field(default_factory=list)
    invocations: list[LlmInvocationCompleted] = field(default_factory=list)


def _anomaly(check: str, subject: str, observed: str, *, tenant: str, session: str,
             occurred_at: int, expected: str = "", message: str,
             severity: str = "flag") -> BillingAnomaly:
    # The id covers what was observed: the same finding re-run adds nothing,
    # a changed one is a new finding.
    return BillingAnomaly(
        event_id=derive_event_id(f"{check}\x1f{subject}\x1f{observed}", "reconcile"),
        occurred_at=occurred_at, tenant_id=tenant, execution_session_id=session,
        check=check, severity=severity, subject_id=subject,  # type: ignore[arg-type]
        expected=expected, observed=observed, message=message,
    )


def reconcile(records: BillingRecords, cfg: BillingSettings) -> list[BillingAnomaly]:
    """Every cross-partition finding, in a deterministic order."""
    billed: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    billed_tokens: dict[tuple[str, str], int] = defaultdict(int)
    last_seen: dict[tuple[str, str], int] = defaultdict(int)
    charged_sources: set[str] = set()
    for item in records.line_items:
        key = (item.tenant_id, item.execution_session_id)
        last_seen[key] = max(last_seen[key], item.occurred_at)
        charged_sources.add(item.source_event_id)
        if item.billed:
            billed[key] += item.total_usd
            if item.line_item_type == "llm_tokens":
                billed_tokens[key] += item.llm_tokens
    out: list[BillingAnomaly] = []

    out.extend(_wallet_checks(records, billed, last_seen))

    if cfg.bill_llm_from_invocation:
        accepted = {s.work_unit_id: s.accepted_attempt for s in records.settled
                    if s.outcome == "accepted"}
        used: dict[tuple[str, str], int] = defaultdict(int)
        # Only invocations the ledger has seen (charged, leaked or held): one it has not
        # read yet is lag, not a loss.
        recorded = charged_sources | {h.source_event_id for h in records.held}
        for inv in records.invocations:
            if accepted.get(inv.work_unit_id) == inv.attempt_index and inv.event_id in recorded:
                key = (inv.tenant_id, inv.execution_session_id)
                used[key] += inv.total_tokens
                last_seen[key] = max(last_seen[key], inv.occurred_at)
        for key in sorted(set(used) | set(billed_tokens)):
            if used[key] != billed_tokens[key]:
                tenant, session = key
                out.append(_anomaly(
                    "session_tokens_mismatch", Scope.of_session(tenant, session).session_key, str(billed_tokens[key]),
                    tenant=tenant, session=session, occurred_at=last_seen[key],
                    expected=str(used[key]),
                    message=f"accepted invocations used {used[key]} tokens, the ledger billed "
                            f"{billed_tokens[key]}"))

    closed = {s.work_unit_id: s for s in records.settled}
    for hold in sorted(records.held, key=lambda h: h.source_event_id):
        settled = closed.get(hold.work_unit_id)
        if settled is not None and hold.source_event_id not in charged_sources:
            out.append(_anomaly(
                "unresolved_hold", hold.source_event_id, settled.outcome,
                tenant=hold.tenant_id, session=hold.execution_session_id,
                occurred_at=max(hold.occurred_at, settled.occurred_at),
                message=f"invocation {hold.source_event_id} of {hold.work_unit_id} is still held "
                        f"although the unit settled ({settled.outcome})"))

    out.extend(_cost_spikes(billed, last_seen, cfg))
    return out


def _wallet_checks(records: BillingRecords, billed: dict[tuple[str, str], Decimal],
                   last_seen: dict[tuple[str, str], int]) -> list[BillingAnomaly]:
    """Each session's wallet against the line items it has folded.

    With partitions known, a partial wallet that has folded n line items is
    compared with the first n of its session's line items in that ledger
    partition, so a wallet that lags the ledger is not a finding.
    """
    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    if records.partition_of:
        folded = {w.wallet_id: w.record_count + w.leakage_count for w in records.wallets
                  if w.scope == "session"}
        seen: dict[str, int] = defaultdict(int)
        for item in records.line_items:
            part = records.partition_of.get(item.line_item_id)
            wid = f"{session_wallet_id(item.tenant_id, item.execution_session_id)}@{part}"
            seen[wid] += 1
            if seen[wid] <= folded.get(wid, 0) and item.billed:
                expected[(item.tenant_id, item.execution_session_id)] += item.total_usd
    else:
        expected = billed
    out: list[BillingAnomaly] = []
    wallets = Wallet.combine(records.wallets)
    for key in sorted(set(expected) | {(w.tenant_id, w.execution_session_id)
                                       for w in wallets.values() if w.execution_session_id}):
        tenant, session = key
        wallet = wallets.get(session_wallet_id(tenant, session))
        debit = wallet.debit_usd if wallet else Decimal("0")
        if abs(debit - expected[key]) > _TOLERANCE:
            out.append(_anomaly(
                "session_total_mismatch", Scope.of_session(tenant, session).session_key, f"{debit:f}", tenant=tenant,
                session=session, occurred_at=last_seen[key], expected=f"{expected[key]:f}",
                message=f"session wallet shows {debit:f} USD, the billed line items it folded "
                        f"sum to {expected[key]:f} USD"))
    return out


def _cost_spikes(billed: dict[tuple[str, str], Decimal], last_seen: dict[tuple[str, str], int],
                 cfg: BillingSettings) -> list[BillingAnomaly]:
    by_tenant: dict[str, list[tuple[str, Decimal]]] = defaultdict(list)
    for (tenant, session), total in billed.items():
        by_tenant[tenant].append((session, total))
    out: list[BillingAnomaly] = []
    factor = Decimal(str(cfg.cost_spike_factor))
    for tenant in sorted(by_tenant):
        sessions = sorted(by_tenant[tenant])
        if len(sessions) < cfg.cost_spike_min_sessions:
            continue
        totals = sorted(t for _, t in sessions)
        mid = len(totals) // 2
        median = totals[mid] if len(totals) % 2 else (totals[mid - 1] + totals[mid]) / 2
        if median <= 0:
            continue
        for session, total in sessions:
            if total > factor * median:
                out.append(_anomaly(
                    "cost_spike", Scope.of_session(tenant, session).session_key, f"{total:f}", tenant=tenant,
                    session=session, occurred_at=last_seen[(tenant, session)],
                    expected=f"<= {factor * median:f}", severity="warning",
                    message=f"session cost {total:f} USD is more than {cfg.cost_spike_factor:g}x "
                            f"the tenant's median session ({median:f} USD)"))
    return out
