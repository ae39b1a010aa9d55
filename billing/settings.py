"""Billing's settings (`ONCEFLOW_BILLING__*`): prices, charging switches, prepaid credit, anomalies."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from onceflow.streams.settings import StreamsSettings
from onceflow.streams.types import SettingsGroup

__all__ = ["BillingRoleSettings", "BillingSettings", "ModelPrice"]


class ModelPrice(BaseModel):
    """USD per 1K tokens for one model, input and output priced apart."""

    input_usd_per_1k: Decimal = Field(ge=0)
    output_usd_per_1k: Decimal = Field(ge=0)


class BillingSettings(SettingsGroup):
    """The price book, the double-charging switches, prepaid credit and anomaly thresholds.

    Defaults are Krako 2.0's prices. A price book file (JSON, see
    `billing.load_price_book`) replaces the prices and their version.
    """

    price_book_file: Path | None = None
    """a JSON price book replacing the prices below and their version"""
    pricing_version: str = "default-2026-11"
    """the version line items record their prices under"""
    cpu_usd_per_second: Decimal = Field(default=Decimal("0.000500"), ge=0)
    """USD per CPU second of a settled unit"""
    default_model: ModelPrice = Field(default_factory=lambda: ModelPrice(
        input_usd_per_1k=Decimal("0.002000"), output_usd_per_1k=Decimal("0.002000")))
    """input and output USD per 1K tokens of a model the price book does not name (JSON)"""
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    """input and output USD per 1K tokens per model (JSON)"""
    bill_llm_from_invocation: bool = Field(
        default=True, description="charge LLM tokens from llm.invocation.completed (safe)")
    bill_llm_from_completion: bool = Field(
        default=False, description="charge LLM tokens from the completion's llm_tokens instead")
    prepaid_credits: dict[str, Decimal] = Field(
        default_factory=dict,
        description="tenant -> prepaid USD; such a tenant's units are held against it before "
                    "they run, and rejected with BUDGET_EXCEEDED when it cannot pay their maximum")
    views_dedupe_window: int = Field(
        default=200_000, ge=1,
        description="line item ids the views remember to drop a second copy of one "
                    "(about 120 bytes each)",
    )
    cost_spike_factor: float = Field(
        default=10.0, gt=1, description="a session costing this many times its tenant's "
                                        "median session is flagged")
    cost_spike_min_sessions: int = Field(
        default=5, ge=1, description="sessions a tenant needs before spikes are judged")

    @model_validator(mode="after")
    def _one_source_for_tokens(self) -> BillingSettings:
        if self.bill_llm_from_invocation and self.bill_llm_from_completion:
            raise ValueError(
                "bill_llm_from_invocation and bill_llm_from_completion are both on, which "
                "would charge the same tokens twice; turn one off "
                "(ONCEFLOW_BILLING__BILL_LLM_FROM_COMPLETION=false is the safe default)")
        return self


class BillingRoleSettings(StreamsSettings):
    """What a billing process runs with: the shared settings and billing's group."""

    billing: BillingSettings = Field(default_factory=BillingSettings)

    @property
    def prepaid_credits(self) -> dict[str, Decimal]:
        return self.billing.prepaid_credits
