"""Builders for billing tests: settled facts, invocations, and the reducers over memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from onceflow.billing import Ledger, WalletFolder, load_price_book
from onceflow.schemas import (
    Event,
    LedgerLineItem,
    LlmInvocationCompleted,
    WalletUpdated,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from onceflow.settings import BillingSettings, OnceflowSettings
from onceflow.streams.state import MemoryState
from onceflow.streams.topics.catalog import TopicCatalog

T0 = 1_700_000_000_000


def accepted(wu: str, *, attempt: int = 1, cpu: str = "1.000000", tokens: int = 0,
             tenant: str = "acme", session: str = "s1", at: int = T0,
             reason: str = "grant_holder", ok: bool = True) -> WorkUnitCompleted:
    """The scheduler's settlement of a completion (accepted unless `ok=False`)."""
    return WorkUnitCompleted(
        event_id=f"settled-{wu}-{attempt}-{reason}", occurred_at=at, tenant_id=tenant,
        execution_session_id=session, work_unit_id=wu, selected_node_id="n1",
        attempt_index=attempt, cpu_seconds=Decimal(cpu), llm_tokens=tokens, accepted=ok,
        settlement_reason=reason,
    )


def report(wu: str, *, attempt: int = 1) -> WorkUnitCompleted:
    """A release-1 agent's report, written as `workunit.completed` without a
    settlement reason: not a settlement, never billed."""
    return WorkUnitCompleted(event_id=f"report-{wu}-{attempt}", occurred_at=T0,
                             tenant_id="acme", execution_session_id="s1", work_unit_id=wu,
                             selected_node_id="n1", attempt_index=attempt,
                             cpu_seconds=Decimal("1"))


def invocation(wu: str, *, attempt: int = 1, tokens_in: int = 100, tokens_out: int = 50,
               model: str = "stub-1", tenant: str = "acme", session: str = "s1",
               n: int = 0, at: int = T0) -> LlmInvocationCompleted:
    return LlmInvocationCompleted(
        event_id=f"inv-{wu}-{attempt}-{n}", occurred_at=at, tenant_id=tenant,
        execution_session_id=session, work_unit_id=wu, node_id="n1", attempt_index=attempt,
        provider="stub", model=model, tokens_in=tokens_in, tokens_out=tokens_out,
        total_tokens=tokens_in + tokens_out, latency_ms=5, estimated_cost_usd=Decimal("0"),
    )


def failed_final(wu: str, *, attempt: int = 1) -> WorkUnitFailed:
    return WorkUnitFailed(event_id=f"failed-{wu}", occurred_at=T0, tenant_id="acme",
                          execution_session_id="s1", work_unit_id=wu, attempt_index=attempt,
                          error_code="abandoned_by_operator", final=True)


def cancelled(wu: str) -> WorkUnitCancelled:
    return WorkUnitCancelled(event_id=f"cancel-{wu}", occurred_at=T0, tenant_id="acme",
                             execution_session_id="s1", work_unit_id=wu)


def billing_settings(**overrides: Any) -> BillingSettings:
    return BillingSettings(**overrides)


@dataclass
class Books:
    """The ledger and the wallet folder over in-memory state, fed in order."""

    cfg: BillingSettings = field(default_factory=BillingSettings)
    ledger_state: MemoryState = field(default_factory=MemoryState)
    wallet_state: MemoryState = field(default_factory=MemoryState)
    facts: list[Event] = field(default_factory=list)
    wallets: list[WalletUpdated] = field(default_factory=list)
    #: the retention horizon (0: the ledger forgets nothing)
    horizon_ms: int = 0

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.cfg, load_price_book(self.cfg), horizon_ms=self.horizon_ms)
        settings = OnceflowSettings(billing=self.cfg)
        self.folder = WalletFolder(self.cfg, TopicCatalog(settings)["ledger"])

    def feed(self, *events: Event) -> list[Event]:
        out: list[Event] = []
        for event in events:
            _, facts = self.ledger.apply(self.ledger_state, event)
            for fact in facts:
                assert isinstance(fact, Event)
                out.append(fact)
                _, updates = self.folder.apply(self.wallet_state, fact)
                self.wallets.extend(u for u in updates if isinstance(u, WalletUpdated))
        self.facts.extend(out)
        return out

    @property
    def line_items(self) -> list[LedgerLineItem]:
        return [f for f in self.facts if isinstance(f, LedgerLineItem)]

    def billed(self) -> list[LedgerLineItem]:
        return [i for i in self.line_items if i.billed]

    def leakage(self) -> list[LedgerLineItem]:
        return [i for i in self.line_items if not i.billed]
