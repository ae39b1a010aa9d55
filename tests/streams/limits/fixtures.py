"""Builders for limiter tests: the pure reducer over in-memory state, events by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from onceflow.schemas import (
    Event,
    LedgerLineItem,
    LedgerUnitSettled,
    SlotDenied,
    SlotGranted,
    SlotQueued,
    SlotReleased,
    SlotRequested,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import Limiter, LimitsSettings, ScopeLimits
from onceflow.streams.state import MemoryState
from onceflow.streams.topics import TopicCatalog
from onceflow.streams.types import Routed

T0 = 1_700_000_000_000


def request(wu: str, scopes: list[str], at: int = T0, attempt: int = 1,
            tenant: str = "acme", session: str = "s1", **fields: Any) -> SlotRequested:
    return SlotRequested(event_id=f"req-{wu}-{attempt}-{at}", occurred_at=at, work_unit_id=wu,
                         tenant_id=tenant, execution_session_id=session, attempt_index=attempt,
                         scopes=scopes, **fields)


def charged(wu: str, usd: str, at: int = T0, *, billed: bool = True, tokens_in: int = 0,
            tokens_out: int = 0, tenant: str = "acme", session: str = "s1") -> LedgerLineItem:
    """A line item the ledger wrote for a unit (LLM tokens when tokens are given)."""
    kind = "llm_tokens" if tokens_in or tokens_out else "workunit_cpu"
    return LedgerLineItem(
        event_id=f"li-{wu}-{usd}-{at}", occurred_at=at, work_unit_id=wu, tenant_id=tenant,
        execution_session_id=session, line_item_id=f"li-{wu}-{usd}-{at}",
        source_event_id=f"src-{wu}-{at}", source_event_type="workunit.completed",
        line_item_type=kind, total_usd=Decimal(usd), pricing_version="v1", billed=billed,
        llm_tokens_in=tokens_in, llm_tokens_out=tokens_out,
        llm_input_price_usd_per_1k=Decimal("0.001"), llm_output_price_usd_per_1k=Decimal("0.004"))


def settled(wu: str, at: int = T0, tenant: str = "acme", session: str = "s1"
            ) -> LedgerUnitSettled:
    """The ledger's settlement of a unit: its budget hold ends."""
    return LedgerUnitSettled(event_id=f"settled-{wu}-{at}", occurred_at=at, work_unit_id=wu,
                             tenant_id=tenant, execution_session_id=session, outcome="accepted",
                             accepted_attempt=1)


def release(wu: str, at: int = T0, reason: str = "completed") -> SlotReleased:
    return SlotReleased(event_id=f"rel-{wu}-{at}", occurred_at=at, work_unit_id=wu,
                        tenant_id="acme", reason=reason)  # type: ignore[arg-type]


@dataclass
class LimiterHarness:
    scopes: dict[str, int] = field(default_factory=dict)
    credits: dict[str, str] = field(default_factory=dict)
    rpm: dict[str, int] = field(default_factory=dict)
    tpm: dict[str, int] = field(default_factory=dict)
    state: MemoryState = field(default_factory=MemoryState)
    outputs: list[Event | Routed] = field(default_factory=list)
    #: sessions' accounts are forgotten once idle this long (0: never)
    horizon_ms: int = 0

    def __post_init__(self) -> None:
        settings = OnceflowSettings(limits=LimitsSettings(
            scopes=self.scopes, requests_per_minute=self.rpm, tokens_per_minute=self.tpm))
        self.limiter = Limiter(ScopeLimits.from_settings(settings.limits),
                               TopicCatalog(settings)["reports"],
                               credits={t: Decimal(c) for t, c in self.credits.items()},
                               horizon_ms=self.horizon_ms)

    def facts(self) -> list[Event]:
        return [o for o in self.outputs if not isinstance(o, Routed)]

    def budget(self, scope: str) -> dict[str, str]:
        """A budget's account as text ({} when the limiter keeps none)."""
        from onceflow.streams.limits._impl.records import BudgetAccount, usd

        account = BudgetAccount.load(self.state, scope)
        if account is None:
            return {}
        return {"reserved": usd(account.reserved), "charged": usd(account.charged),
                **({"budget": usd(account.budget)} if account.budget is not None else {})}

    @staticmethod
    def denied(facts: list[Event]) -> list[SlotDenied]:
        return [f for f in facts if isinstance(f, SlotDenied)]

    @staticmethod
    def grants(facts: list[Event]) -> list[SlotGranted]:
        return [f for f in facts if isinstance(f, SlotGranted)]

    def feed(self, *events: Event) -> list[Event]:
        facts: list[Event] = []
        for e in events:
            _, out = self.limiter.apply(self.state, e)
            self.outputs.extend(out)
            facts += [o for o in out if not isinstance(o, Routed)]
        return facts

    def granted(self, facts: list[Event]) -> list[str]:
        return [f.work_unit_id or "" for f in facts if isinstance(f, SlotGranted)]

    def queued(self, facts: list[Event]) -> list[SlotQueued]:
        return [f for f in facts if isinstance(f, SlotQueued)]
