"""Reading the billing topics back: for the CLI, the demo, reconciliation and replay."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from onceflow.billing._impl.reconcile import BillingRecords
from onceflow.billing._impl.wallets import Wallet
from onceflow.schemas import (
    BillingAnomaly,
    CodecError,
    LedgerChargeHeld,
    LedgerLineItem,
    LedgerUnitSettled,
    LlmInvocationCompleted,
    SingleObjectCodec,
    WalletUpdated,
)
from onceflow.streams.kafka import TopicFollower, read_events
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from onceflow.billing.settings import BillingRoleSettings

__all__ = ["BillingFollower", "Tally", "read_anomalies", "read_billing_records", "read_wallets"]

def _latest_partials(settings: BillingRoleSettings) -> list[WalletUpdated]:
    latest: dict[str, WalletUpdated] = {}
    topic = TopicCatalog(settings)["wallets"].name
    for _, event in read_events(settings, topic, SingleObjectCodec(),
                                event_types=frozenset({"wallet.updated"})):
        assert isinstance(event, WalletUpdated)
        latest[event.wallet_id] = event  # one writer per partial: partition order is its order
    return [latest[k] for k in sorted(latest)]

def read_wallets(settings: BillingRoleSettings) -> dict[str, Wallet]:
    """Every wallet (tenants and sessions), each the sum of its partials."""
    return Wallet.combine(_latest_partials(settings))

def read_billing_records(settings: BillingRoleSettings, *, invocations: bool = True
                         ) -> BillingRecords:
    catalog = TopicCatalog(settings)
    codec = SingleObjectCodec()
    records = BillingRecords(wallets=_latest_partials(settings))
    for msg, event in read_events(settings, catalog["ledger"].name, codec):
        if isinstance(event, LedgerLineItem):
            records.line_items.append(event)
            records.partition_of[event.line_item_id] = msg.partition() or 0
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

def read_anomalies(settings: BillingRoleSettings) -> list[BillingAnomaly]:
    """Findings on the anomalies topic, once each (a re-found finding has the same id)."""
    seen: dict[str, BillingAnomaly] = {}
    topic = TopicCatalog(settings)["anomalies"].name
    for _, event in read_events(settings, topic, SingleObjectCodec()):
        if isinstance(event, BillingAnomaly) and event.event_id not in seen:
            seen[event.event_id] = event
    return list(seen.values())



@dataclass
class Tally:
    count: int = 0
    tokens: int = 0
    total_usd: Decimal = Decimal("0")

    def add(self, item: LedgerLineItem) -> None:
        self.count += 1
        self.tokens += item.llm_tokens
        self.total_usd += item.total_usd


class BillingFollower:
    """Keeps reading the ledger and the wallets: what has been billed so far, and to whom."""

    def __init__(self, settings: BillingRoleSettings, *, only: set[str] | None = None) -> None:
        """`only`: count line items of just these work units in the breakdown (wallets and
        `line_items` always cover everything)."""
        catalog = TopicCatalog(settings)
        self.only = only
        self.codec = SingleObjectCodec()
        self.settled: dict[str, str] = {}  # work unit -> outcome, as the ledger saw it
        self.line_items = 0
        self.partials: dict[str, WalletUpdated] = {}
        self.by_type: dict[tuple[str, bool], Tally] = defaultdict(Tally)  # (type, billed)
        self.by_model: dict[str, Tally] = defaultdict(Tally)  # billed LLM line items
        self._follower = TopicFollower(settings, [catalog["ledger"].name,
                                                  catalog["wallets"].name])

    def poll(self, timeout: float = 0.2, max_records: int = 100_000) -> int:
        n = 0
        for msg in self._follower.read(timeout, max_records):
            n += 1
            try:
                self._add(self.codec.decode(msg.value() or b""))
            except CodecError:
                continue
        return n

    def _add(self, event: object) -> None:
        if isinstance(event, LedgerUnitSettled):
            self.settled[event.work_unit_id or ""] = event.outcome
        elif isinstance(event, LedgerLineItem):
            self.line_items += 1
            if self.only is not None and event.work_unit_id not in self.only:
                return
            self.by_type[(event.line_item_type, event.billed)].add(event)
            if event.billed and event.line_item_type == "llm_tokens":
                self.by_model[event.model or "-"].add(event)
        elif isinstance(event, WalletUpdated):
            self.partials[event.wallet_id] = event

    def wallets(self) -> dict[str, Wallet]:
        return Wallet.combine(self.partials.values())

    def folded_into_wallets(self) -> int:
        """Line items the tenant wallets have folded (billed and leakage)."""
        return sum(w.record_count + w.leakage_count for w in self.wallets().values()
                   if not w.execution_session_id)

    def close(self) -> None:
        self._follower.close()
