"""Billing: pricing, the ledger, wallets and budgets, the anomaly checker, reconciliation.

The ledger turns the scheduler's settlements and the LLM invocations into
line items, each charged exactly once; wallets fold from the ledger; the
anomaly checker and `reconcile` check both. Import from here; `billing._impl`
is private.
"""

from onceflow.billing._impl.anomalies import AnomalyChecker
from onceflow.billing._impl.ledger import Ledger, line_item_id
from onceflow.billing._impl.pricing import (
    ModelRate,
    PriceBook,
    PriceBookError,
    cost_estimator,
    load_price_book,
    money,
)
from onceflow.billing._impl.read import (
    BillingFollower,
    Tally,
    read_anomalies,
    read_billing_records,
    read_wallets,
)
from onceflow.billing._impl.reconcile import BillingRecords, reconcile
from onceflow.billing._impl.wallets import Wallet, WalletFolder, session_wallet_id, tenant_wallet_id
from onceflow.billing.settings import BillingSettings, ModelPrice

__all__ = [
    "AnomalyChecker",
    "BillingFollower",
    "BillingRecords",
    "BillingSettings",
    "Ledger",
    "ModelPrice",
    "ModelRate",
    "PriceBook",
    "PriceBookError",
    "Tally",
    "Wallet",
    "WalletFolder",
    "cost_estimator",
    "line_item_id",
    "load_price_book",
    "money",
    "read_anomalies",
    "read_billing_records",
    "read_wallets",
    "reconcile",
    "session_wallet_id",
    "tenant_wallet_id",
]
