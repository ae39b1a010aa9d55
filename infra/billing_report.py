"""Billing as people read it: wallet tables, the breakdown, findings (CLI and demo)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from onceflow.billing import BillingFollower, Wallet
from onceflow.schemas import BillingAnomaly

__all__ = ["anomaly_table", "breakdown_tables", "print_all", "wallet_table"]


def wallet_table(wallets: Iterable[Wallet], title: str = "wallets") -> Table:
    table = Table("wallet", "prepaid credit", "charged (USD)", "reserved (USD)", "balance (USD)",
                  "available (USD)", "line items", "unbilled leakage (USD)", title=title)
    for w in wallets:
        name = w.execution_session_id or w.tenant_id
        table.add_row(name, f"{w.credit_usd:f}" if w.prepaid else "-", f"{w.debit_usd:f}",
                      f"{w.reserved_usd:f}", f"{w.balance_usd:f}" if w.prepaid else "-",
                      f"{w.available_usd:f}" if w.prepaid else "-", str(w.record_count),
                      f"{w.leakage_usd:f} ({w.leakage_count})" if w.leakage_count else "0")
    return table


def breakdown_tables(follower: BillingFollower, title: str = "billing breakdown"
                     ) -> list[Table]:
    by_type = Table("line item type", "billed", "count", "total (USD)", title=title)
    for (kind, billed), tally in sorted(follower.by_type.items()):
        by_type.add_row(kind, "yes" if billed else "no (leakage)", str(tally.count),
                        f"{tally.total_usd:f}")
    tables = [by_type]
    if follower.by_model:
        by_model = Table("model", "invocations", "tokens", "total (USD)", title="LLM cost by model")
        for model, tally in sorted(follower.by_model.items()):
            by_model.add_row(model, str(tally.count), str(tally.tokens), f"{tally.total_usd:f}")
        tables.append(by_model)
    return tables


def anomaly_table(findings: Iterable[BillingAnomaly]) -> Table:
    table = Table("check", "severity", "tenant", "session", "subject", "message",
                  title="billing anomalies")
    for f in findings:
        table.add_row(f.check, f.severity, f.tenant_id, f.execution_session_id, f.subject_id,
                      f.message)
    return table


def print_all(console: Console, tables: Iterable[Table]) -> None:
    for t in tables:
        console.print(t)
