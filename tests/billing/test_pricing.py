"""Pricing: the price book, and money rounded once, to 6 places, half to even."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from onceflow.agents import StubProvider
from onceflow.billing import PriceBook, PriceBookError, cost_estimator, load_price_book, money
from onceflow.schemas import WorkUnitSubmitted
from onceflow.settings import BillingSettings


@pytest.mark.parametrize(("raw", "expected"), [
    ("0.0000005", "0.000000"),   # half: to the even neighbour below
    ("0.0000015", "0.000002"),   # half: to the even neighbour above
    ("0.0000025", "0.000002"),
    ("0.0000035", "0.000004"),
    ("0.00000250001", "0.000003"),  # above half goes up
    ("0.0000024999", "0.000002"),
    ("-0.0000025", "-0.000002"),
])
def test_money_rounds_half_even_at_the_sixth_place(raw: str, expected: str) -> None:
    assert money(Decimal(raw)) == Decimal(expected)
    assert str(money(Decimal(raw))) == expected


def test_cpu_cost_rounds_once_after_the_exact_product() -> None:
    book = load_price_book(BillingSettings(cpu_usd_per_second=Decimal("0.0005")))
    assert book.cpu_cost(Decimal("0.001")) == Decimal("0.000000")   # 0.0000005 -> even 0
    assert book.cpu_cost(Decimal("0.003")) == Decimal("0.000002")   # 0.0000015 -> even 2
    assert book.cpu_cost(Decimal("0.005")) == Decimal("0.000002")   # 0.0000025 -> even 2
    assert book.cpu_cost(Decimal("2.5")) == Decimal("0.001250")


def test_token_cost_rounds_per_line_and_keeps_big_counts_exact() -> None:
    assert PriceBook.token_cost(1, Decimal("0.0025")) == Decimal("0.000002")
    assert PriceBook.token_cost(3, Decimal("0.0025")) == Decimal("0.000008")  # 0.0000075
    # The default context (28 digits) would round this product before the quantize.
    huge = 10**28 + 1
    assert PriceBook.token_cost(huge, Decimal("0.002001")) == \
        Decimal("20010000000000000000000.000002")


def test_unknown_models_pay_the_default_rate() -> None:
    cfg = BillingSettings.model_validate({"models": {"big": {"input_usd_per_1k": "0.01",
                                                            "output_usd_per_1k": "0.03"}}})
    book = load_price_book(cfg)
    assert book.rate_for("big").output_usd_per_1k == Decimal("0.03")
    assert book.rate_for("other") == book.default_model
    assert book.rate_for(None) == book.default_model
    assert book.version == cfg.pricing_version


def test_price_book_file_replaces_prices_and_version(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "version": "2026-12-a", "cpu_usd_per_second": "0.0001",
        "default_model": {"input_usd_per_1k": "0.001", "output_usd_per_1k": "0.002"},
        "models": {"gpt-x": {"input_usd_per_1k": "0.005", "output_usd_per_1k": "0.015"}},
    }))
    book = load_price_book(BillingSettings(price_book_file=path))
    assert book.version == "2026-12-a"
    assert book.cpu_usd_per_second == Decimal("0.0001")
    assert book.rate_for("gpt-x").input_usd_per_1k == Decimal("0.005")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"cpu_usd_per_second": "1", "default_model": {}}), "`version`"),
    (json.dumps({"version": "v", "cpu_usd_per_second": 0.5,
                 "default_model": {"input_usd_per_1k": "1", "output_usd_per_1k": "1"}}),
     "not floats"),
    (json.dumps({"version": "v", "cpu_usd_per_second": "-1",
                 "default_model": {"input_usd_per_1k": "1", "output_usd_per_1k": "1"}}),
     ">= 0"),
    (json.dumps({"version": "v", "cpu_usd_per_second": "1",
                 "default_model": {"input_usd_per_1k": "1"}}), "output_usd_per_1k"),
])
def test_bad_price_books_are_refused_with_the_field_named(tmp_path: Path, content: str,
                                                         message: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(PriceBookError, match=message):
        load_price_book(BillingSettings(price_book_file=path))


def test_a_missing_price_book_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match="ONCEFLOW_BILLING__PRICE_BOOK_FILE"):
        load_price_book(BillingSettings(price_book_file=tmp_path / "nope.json"))


def test_both_token_switches_on_is_refused() -> None:
    with pytest.raises(ValueError, match="charge the same tokens twice"):
        BillingSettings(bill_llm_from_invocation=True, bill_llm_from_completion=True)


def _llm_unit(**fields: object) -> WorkUnitSubmitted:
    return WorkUnitSubmitted(event_id="s", occurred_at=1, work_unit_id="wu", kind="llm_pod",
                             **fields)  # type: ignore[arg-type]


def test_the_estimate_prices_input_and_output_tokens_at_the_units_model(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "version": "v9", "cpu_usd_per_second": "0.001",
        "default_model": {"input_usd_per_1k": "0.001", "output_usd_per_1k": "0.002"},
        "models": {"big": {"input_usd_per_1k": "0.010", "output_usd_per_1k": "0.030"}},
    }))
    book = load_price_book(BillingSettings(price_book_file=path))
    unit = _llm_unit(prompt="x" * 400, model="big", simulated_ms=500,
                     parameters={"max_tokens": "200"})
    # 0.5 s of CPU + 100 input tokens at 0.010/1k + 200 output tokens (the cap) at 0.030/1k
    assert book.estimate(unit) == Decimal("0.0005") + Decimal("0.001") + Decimal("0.006")
    default = _llm_unit(prompt="x" * 400, parameters={"max_tokens": "200"})
    assert book.estimate(default) == Decimal("0.0001") + Decimal("0.0004")


def test_the_estimate_is_what_the_stub_provider_then_bills() -> None:
    """One token rule: the budget estimate of an LLM unit equals the stub's invocation
    priced by the same book (plus the CPU the unit states)."""
    book = cost_estimator(BillingSettings())
    assert isinstance(book, PriceBook)
    for prompt in ("hello", "a longer prompt " * 20, "x"):
        result = StubProvider().complete(prompt, None, None)
        rate = book.rate_for(result.model)
        billed = (book.token_cost(result.tokens_in, rate.input_usd_per_1k)
                  + book.token_cost(result.tokens_out, rate.output_usd_per_1k))
        assert book.estimate(_llm_unit(prompt=prompt)) == billed


def test_a_cpu_unit_is_estimated_by_its_stated_time_only() -> None:
    book = cost_estimator(BillingSettings(cpu_usd_per_second=Decimal("0.002")))
    unit = WorkUnitSubmitted(event_id="s", occurred_at=1, work_unit_id="wu", simulated_ms=250)
    assert book.estimate(unit) == Decimal("0.0005")


def test_the_maximum_holds_cpu_for_the_whole_lease_and_output_up_to_max_tokens() -> None:
    book = cost_estimator(BillingSettings(cpu_usd_per_second=Decimal("0.002")))
    unit = _llm_unit(prompt="x" * 400, simulated_ms=250, lease_ms=3000,
                     parameters={"max_tokens": "200"})
    rate = book.rate_for(None)  # type: ignore[attr-defined]
    tokens = (PriceBook.token_cost(100, rate.input_usd_per_1k)
              + PriceBook.token_cost(200, rate.output_usd_per_1k))
    assert book.maximum(unit) == Decimal("0.006") + tokens  # 3 s of CPU, not 0.25 s
    assert book.estimate(unit) == Decimal("0.0005") + tokens


def test_rate_tokens_weigh_output_by_its_price_against_input(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "version": "v9", "cpu_usd_per_second": "0.001",
        "default_model": {"input_usd_per_1k": "0.001", "output_usd_per_1k": "0.004"},
    }))
    book = load_price_book(BillingSettings(price_book_file=path))
    unit = _llm_unit(prompt="x" * 400, parameters={"max_tokens": "50"})
    assert book.rate_tokens(unit) == 100 + 4 * 50
    assert book.rate_tokens(WorkUnitSubmitted(event_id="s", occurred_at=1)) == 0
