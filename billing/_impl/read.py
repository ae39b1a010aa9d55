"""Reading the billing topics back: for the CLI, the demo, reconciliation and replay."""

from __future__ import annotations

from billing._impl.reconcile import BillingRecords
from billing._impl.wallets import Wallet
from schemas import (
    BillingAnomaly,
    LedgerChargeHeld,
    LedgerLineItem,
    LedgerUnitSettled,
    LlmInvocationCompleted,
    SingleObjectCodec,
    WalletUpdated,
)
from streams.kafka import read_events
from streams.settings import OnceflowSettings
from streams.topics.catalog import TopicCatalog

__all__ = ["read_anomalies", "read_billing_records", "read_wallets"]

def _latest_partials(settings: OnceflowSettings) -> list[WalletUpdated]:
    latest: dict[str, WalletUpdated] = {}
    topic = TopicCatalog(settings)["wallets"].name
    for _, event in read_events(settings, topic, SingleObjectCodec(),
                                event_types=frozenset({"wallet.updated"})):
        assert isinstance(event, WalletUpdated)
        latest[event.wallet_id] = event  # one writer per partial: partition order is its order
    return [latest[k] for k in sorted(latest)]

def read_wallets(settings: OnceflowSettings) -> dict[str, Wallet]:
    """Every wallet (tenants and sessions), each the sum of its partials."""
    return Wallet.combine(_latest_partials(settings))

def read_billing_records(settings: OnceflowSettings, *, invocations: bool = True
                         ) -> BillingRecords:
    catalog = TopicCatalog(settings)
    codec = SingleObjectCodec()
    records = BillingRecords(wallets=_latest_partials(settings))
    for _, event in read_events(settings, catalog["ledger"].name, codec):
        if isinstance(event, LedgerLineItem):
            records.line_items.append(event)
        elif isinstance(event, LedgerChargeHeld):
            records.held.append(event)
        elif isinstance(event, LedgerUnitSettled):
            records.settled.append(event)
    if invocations:
        for _, event in read_events(settings, catalog["llm"].name, codec,
                                    event_types=frozenset({"llm.invocation.completed"})):
            assert isinstance(event, LlmInvocationCompleted)
            records.invocations.append(event)
    return records

def read_anomalies(settings: OnceflowSettings) -> list[BillingAnomaly]:
    """Findings on the anomalies topic, once each (a re-found finding has the same id)."""
    seen: dict[str, BillingAnomaly] = {}
    topic = TopicCatalog(settings)["anomalies"].name
    for _, event in read_events(settings, topic, SingleObjectCodec()):
        if isinstance(event, BillingAnomaly) and event.event_id not in seen:
            seen[event.event_id] = event
    return list(seen.values())

