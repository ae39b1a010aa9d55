"""Wallets: what each tenant and each session has been charged, folded from the ledger.

The ledger is partitioned by work unit and a tenant's units are spread over
every partition, so each ledger partition folds its own *partial* wallets
(one writer each, exact sums, no repartition topic) and a wallet is the sum
of its partials: `Wallet.combine`. A partial's `balance_usd` is its
contribution (minus its debits); the wallet's balance is the tenant's
prepaid credit plus the contributions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from onceflow.billing.settings import BillingSettings
from onceflow.schemas import Event, LedgerLineItem, Scope, WalletUpdated, quantize_money
from onceflow.streams.ids import caused_by
from onceflow.streams.topics.catalog import Topic
from onceflow.streams.types import Reducer, State

__all__ = ["Wallet", "WalletFolder", "session_wallet_id", "tenant_wallet_id"]

_ZERO = Decimal("0")


def tenant_wallet_id(tenant: str) -> str:
    """A tenant's wallet is named by its scope (`tenant:<tenant>`), as its budget is."""
    return str(Scope.of_tenant(tenant))


def session_wallet_id(tenant: str, session: str) -> str:
    """A session's wallet is named by its scope (`session:<tenant>/<session>`; releases
    before 6 wrote `session:<tenant>:<session>`, which `Scope.parse` still reads)."""
    return str(Scope.of_session(tenant, session))


def _scope_of(partial: WalletUpdated) -> str:
    """The wallet a partial belongs to, by its scope: a partial written before release 6
    (`session:<tenant>:<session>`) adds to the same wallet as one written since."""
    return str(Scope.parse(partial.wallet_id.rsplit("@", 1)[0]))


@dataclass(frozen=True)
class Wallet:
    """A whole wallet: the sum of its partials, with the tenant's credit."""

    wallet_id: str
    tenant_id: str
    execution_session_id: str
    credit_usd: Decimal
    debit_usd: Decimal
    leakage_usd: Decimal
    record_count: int
    leakage_count: int
    prepaid: bool
    #: held for units not yet billed (the limiter's budget holds; 0 when none are read)
    reserved_usd: Decimal = _ZERO

    @property
    def balance_usd(self) -> Decimal:
        return self.credit_usd - self.debit_usd

    @property
    def available_usd(self) -> Decimal:
        """What new work may still be held against: the balance less what running work holds."""
        return self.balance_usd - self.reserved_usd

    @staticmethod
    def combine(partials: Iterable[WalletUpdated]) -> dict[str, Wallet]:
        """Latest partials (one per wallet and ledger partition) summed per wallet."""
        out: dict[str, Wallet] = {}
        for p in sorted(partials, key=lambda w: (_scope_of(w), w.ledger_partition,
                                                 w.wallet_id)):
            wid = _scope_of(p)
            prev = out.get(wid)
            out[wid] = Wallet(
                wid, p.tenant_id, p.execution_session_id if p.scope == "session" else "",
                max(p.total_credit_usd, prev.credit_usd if prev else _ZERO),
                p.total_debit_usd + (prev.debit_usd if prev else _ZERO),
                p.total_leakage_usd + (prev.leakage_usd if prev else _ZERO),
                p.record_count + (prev.record_count if prev else 0),
                p.leakage_count + (prev.leakage_count if prev else 0),
                p.prepaid or (prev.prepaid if prev else False),
            )
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Wallet:
        """A wallet as `as_json` wrote it (what the API answers)."""
        return cls(data["wallet_id"], data["tenant_id"], data["execution_session_id"],
                   Decimal(data["credit_usd"]), Decimal(data["debit_usd"]),
                   Decimal(data["leakage_usd"]), data["line_items"], data["leakage_items"],
                   data["prepaid"], Decimal(data["reserved_usd"]))

    def as_json(self) -> dict[str, Any]:
        return {
            "wallet_id": self.wallet_id, "tenant_id": self.tenant_id,
            "execution_session_id": self.execution_session_id,
            "prepaid": self.prepaid, "credit_usd": f"{self.credit_usd:f}",
            "debit_usd": f"{self.debit_usd:f}", "balance_usd": f"{self.balance_usd:f}",
            "reserved_usd": f"{self.reserved_usd:f}", "available_usd": f"{self.available_usd:f}",
            "line_items": self.record_count, "leakage_usd": f"{self.leakage_usd:f}",
            "leakage_items": self.leakage_count,
        }


class WalletFolder(Reducer):
    """Partial wallets per tenant and per session, one fact per wallet a line item touches."""

    name = "wallets"
    accepts = frozenset({"ledger.line_item"})

    def __init__(self, settings: BillingSettings, ledger: Topic) -> None:
        self.cfg = settings
        self.ledger = ledger

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if not isinstance(event, LedgerLineItem):
            return ()  # holds and settlements move no money
        tenant = event.tenant_id
        partition = self.ledger.partition_of(event.work_unit_id or event.event_id)
        credit = self.cfg.prepaid_credits.get(tenant)
        facts: list[Event] = []
        for scope, wid in (("tenant", tenant_wallet_id(tenant)),
                           ("session", session_wallet_id(tenant, event.execution_session_id))):
            key = f"{wid}@{partition}"
            prev = state.get(f"w:{key}") or {}
            debit = Decimal(prev.get("debit", "0"))
            leakage = Decimal(prev.get("leakage", "0"))
            count = prev.get("count", 0)
            leaks = prev.get("leaks", 0)
            if event.billed:
                debit += event.total_usd
                count += 1
            else:
                leakage += event.total_usd
                leaks += 1
            facts.append(WalletUpdated(
                **caused_by(event, f"wallet:{scope}", tenant_id=tenant,
                            execution_session_id=(event.execution_session_id
                                                  if scope == "session" else "")),
                balance_usd=-debit, total_debit_usd=debit,
                total_credit_usd=credit if credit is not None else _ZERO,
                record_count=count, last_line_item_id=event.line_item_id, wallet_id=key,
                scope=scope,  # type: ignore[arg-type]
                ledger_partition=partition, prepaid=credit is not None,
                total_leakage_usd=leakage, leakage_count=leaks,
            ))
        return facts

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, WalletUpdated):
            # Quantized as on the wire, so the live fold and a replay of the
            # decoded fact store the same bytes ("0" and "0.000000" differ).
            state.set(f"w:{fact.wallet_id}", {
                "debit": f"{quantize_money(fact.total_debit_usd):f}",
                "leakage": f"{quantize_money(fact.total_leakage_usd):f}",
                "count": fact.record_count, "leaks": fact.leakage_count,
            })
