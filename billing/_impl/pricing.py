"""The price book: what a CPU second and a thousand tokens cost, under a version.

Every line item names the `pricing_version` it was priced with, so a price
change is visible in the ledger and a replay prices nothing again (it folds
the line items as they were written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from onceflow.billing.settings import BillingSettings
from onceflow.schemas import (
    estimated_input_tokens,
    estimated_output_tokens,
    max_tokens_of,
    quantize_money,
    weighted_tokens,
)
from onceflow.streams.types import CostEstimator, PricedWork

__all__ = ["ModelRate", "PriceBook", "PriceBookError", "cost_estimator", "load_price_book",
           "money"]


class PriceBookError(ValueError):
    """A price book that cannot be used; the message names the file and the field."""


def money(value: Decimal) -> Decimal:
    """An exact product or sum, quantized once to 6 places half-even.

    The products are computed with enough digits that nothing is rounded
    before the one quantize (the default context keeps 28 significant digits,
    which a large token count times a 6-place price could exceed).
    """
    with localcontext() as ctx:
        ctx.prec = 60
        return quantize_money(value)


@dataclass(frozen=True)
class ModelRate:
    input_usd_per_1k: Decimal
    output_usd_per_1k: Decimal


@dataclass(frozen=True)
class PriceBook:
    version: str
    cpu_usd_per_second: Decimal
    default_model: ModelRate
    models: dict[str, ModelRate] = field(default_factory=dict)
    #: CPU costs by milliseconds, as the scheduler prices many units of a few durations
    #: (a cache, not part of the book: exact, since the same input gives the same money)
    _cpu_by_ms: dict[int, Decimal] = field(default_factory=dict, compare=False, repr=False)

    def rate_for(self, model: str | None) -> ModelRate:
        """A model's rate; unknown models (and none) pay the default."""
        return self.models.get(model or "", self.default_model)

    def cpu_cost(self, cpu_seconds: Decimal) -> Decimal:
        with localcontext() as ctx:
            ctx.prec = 60
            return money(cpu_seconds * self.cpu_usd_per_second)

    @staticmethod
    def token_cost(tokens: int, usd_per_1k: Decimal) -> Decimal:
        with localcontext() as ctx:
            ctx.prec = 60
            return money(Decimal(tokens) * usd_per_1k / 1000)

    def estimate(self, unit: PricedWork) -> Decimal:
        """What a unit will likely cost, priced like its line items will be (a `CostEstimator`).

        CPU time is `simulated_ms` (the only duration a submission states).
        An LLM unit's input tokens are its `llm_tokens`, or its prompt's
        estimate; its output tokens are its `max_tokens` cap, or the estimate
        for that prompt; each at its model's own input and output price.
        """
        return self._priced(unit, unit.simulated_ms)

    def _priced(self, unit: PricedWork, cpu_ms: int) -> Decimal:
        """`cpu_ms` of CPU and the unit's estimated tokens, at its model's prices."""
        cost = self._cpu_by_ms.get(cpu_ms)
        if cost is None:
            if len(self._cpu_by_ms) > 4096:
                self._cpu_by_ms.clear()
            cost = self._cpu_by_ms[cpu_ms] = self.cpu_cost(Decimal(cpu_ms) / 1000)
        tokens_in, tokens_out = self._tokens(unit)
        if tokens_in or tokens_out:
            rate = self.rate_for(unit.model)
            cost += (self.token_cost(tokens_in, rate.input_usd_per_1k)
                     + self.token_cost(tokens_out, rate.output_usd_per_1k))
        return cost

    def maximum(self, unit: PricedWork) -> Decimal:
        """The most a unit can be billed, which a budget holds for it before it runs.

        CPU for its whole lease (an attempt's result is accepted only within
        its lease, so no billed attempt runs longer), and the estimate's
        tokens: input, and output up to `max_tokens` (without a cap, the
        output estimate is all there is to hold).
        """
        return self._priced(unit, max(unit.simulated_ms, unit.lease_ms))

    def rate_tokens(self, unit: PricedWork) -> int:
        """The tokens a unit will likely spend of a token rate limit: the estimate's
        input and output tokens, output weighted by its model's prices."""
        tokens_in, tokens_out = self._tokens(unit)
        if not (tokens_in or tokens_out):
            return 0
        rate = self.rate_for(unit.model)
        return weighted_tokens(tokens_in, tokens_out, rate.input_usd_per_1k,
                               rate.output_usd_per_1k)

    def max_tokens(self, unit: PricedWork) -> int:
        tokens_in, tokens_out = self._tokens(unit)
        return tokens_in + tokens_out

    @staticmethod
    def _tokens(unit: PricedWork) -> tuple[int, int]:
        """A unit's estimated input and output tokens (see `estimate`)."""
        prompt = unit.prompt or ""
        tokens_in = unit.llm_tokens or (estimated_input_tokens(prompt) if prompt else 0)
        tokens_out = 0
        if unit.kind == "llm_pod" and prompt:
            tokens_out = estimated_output_tokens(prompt, max_tokens_of(unit.parameters))
        return tokens_in, tokens_out


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, float):
        raise PriceBookError(f"{where}: write prices as strings (\"0.000500\"), not floats, so "
                             "no binary rounding touches them")
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise PriceBookError(f"{where}: {value!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise PriceBookError(f"{where}: {value!r} must be a finite amount >= 0")
    return amount


def _rate(data: Any, where: str) -> ModelRate:
    if not isinstance(data, dict):
        raise PriceBookError(f"{where}: expected an object with input_usd_per_1k and "
                             "output_usd_per_1k")
    missing = [k for k in ("input_usd_per_1k", "output_usd_per_1k") if k not in data]
    if missing:
        raise PriceBookError(f"{where}: missing {', '.join(missing)}")
    return ModelRate(_amount(data["input_usd_per_1k"], f"{where}.input_usd_per_1k"),
                     _amount(data["output_usd_per_1k"], f"{where}.output_usd_per_1k"))


def _from_file(path: Path) -> PriceBook:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PriceBookError(f"price book {path} does not exist (ONCEFLOW_BILLING__PRICE_BOOK_FILE)"
                             ) from None
    except ValueError as exc:
        raise PriceBookError(f"price book {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PriceBookError(f"price book {path}: expected a JSON object")
    where = str(path)
    if not isinstance(data.get("version"), str) or not data["version"]:
        raise PriceBookError(f"{where}: `version` (a non-empty string) is required: every line "
                             "item records the version it was priced with")
    if "cpu_usd_per_second" not in data or "default_model" not in data:
        raise PriceBookError(f"{where}: cpu_usd_per_second and default_model are required")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise PriceBookError(f"{where}.models: expected an object of model name -> rate")
    return PriceBook(
        version=data["version"],
        cpu_usd_per_second=_amount(data["cpu_usd_per_second"], f"{where}.cpu_usd_per_second"),
        default_model=_rate(data["default_model"], f"{where}.default_model"),
        models={name: _rate(rate, f"{where}.models.{name}") for name, rate in sorted(
            models.items())},
    )


def load_price_book(settings: BillingSettings) -> PriceBook:
    """The price book from its file when one is set, otherwise from the settings."""
    if settings.price_book_file is not None:
        return _from_file(settings.price_book_file)
    return PriceBook(
        version=settings.pricing_version,
        cpu_usd_per_second=settings.cpu_usd_per_second,
        default_model=ModelRate(settings.default_model.input_usd_per_1k,
                                settings.default_model.output_usd_per_1k),
        models={name: ModelRate(r.input_usd_per_1k, r.output_usd_per_1k)
                for name, r in sorted(settings.models.items())},
    )


def cost_estimator(settings: BillingSettings) -> CostEstimator:
    """Billing's estimate of a unit's cost, for the scheduler's budget admission."""
    return load_price_book(settings)
