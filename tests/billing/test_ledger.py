"""The ledger reducer: what is charged, what is leakage, and that order does not matter."""

from __future__ import annotations

import itertools
import random
from decimal import Decimal

from onceflow.billing import Wallet, line_item_id, money, tenant_wallet_id
from onceflow.schemas import LedgerChargeHeld, LedgerLineItem, LedgerUnitSettled
from onceflow.streams.state import MemoryState
from tests.billing.fixtures import (
    Books,
    accepted,
    billing_settings,
    cancelled,
    failed_final,
    invocation,
    report,
)


def test_an_accepted_completion_is_charged_its_cpu_seconds() -> None:
    books = Books()
    facts = books.feed(accepted("wu1", cpu="2.5"))
    assert isinstance(facts[-1], LedgerUnitSettled)  # after its charges: it ends budget holds
    (item,) = books.line_items
    assert item.line_item_type == "workunit_cpu"
    assert item.billed
    assert item.cpu_seconds == Decimal("2.5")
    assert item.cpu_unit_price_usd == Decimal("0.0005")
    assert item.total_usd == item.subtotal_cpu_usd == Decimal("0.001250")
    assert item.line_item_id == item.event_id == line_item_id("settled-wu1-1-grant_holder",
                                                              "workunit_cpu")
    assert (item.currency, item.rounded_scale, item.rounding_mode) == ("USD", 6,
                                                                       "ROUND_HALF_EVEN")
    assert item.pricing_version == books.cfg.pricing_version
    assert (item.tenant_id, item.execution_session_id, item.work_unit_id) == ("acme", "s1",
                                                                            "wu1")


def test_agent_reports_are_not_settlements_and_charge_nothing() -> None:
    books = Books()
    assert books.feed(report("wu1")) == []


def test_tokens_are_charged_from_the_invocation_never_again_from_the_completion() -> None:
    books = Books()
    books.feed(invocation("wu1", tokens_in=1000, tokens_out=500),
               accepted("wu1", cpu="0", tokens=1500))
    cpu = [i for i in books.billed() if i.line_item_type == "workunit_cpu"]
    llm = [i for i in books.billed() if i.line_item_type == "llm_tokens"]
    assert len(cpu) == 1 and len(llm) == 1
    assert llm[0].source_event_type == "llm.invocation.completed"
    assert (llm[0].llm_tokens_in, llm[0].llm_tokens_out, llm[0].llm_tokens) == (1000, 500, 1500)
    assert llm[0].subtotal_llm_input_usd == Decimal("0.002000")
    assert llm[0].subtotal_llm_output_usd == Decimal("0.001000")
    assert llm[0].total_usd == Decimal("0.003000")


def test_the_completion_switch_charges_tokens_from_the_completion_instead() -> None:
    books = Books(billing_settings(bill_llm_from_invocation=False,
                                  bill_llm_from_completion=True))
    books.feed(invocation("wu1", tokens_in=1000, tokens_out=500),
               accepted("wu1", cpu="0", tokens=1500))
    llm = [i for i in books.billed() if i.line_item_type == "llm_tokens"]
    assert len(llm) == 1
    assert llm[0].source_event_type == "workunit.completed"
    assert llm[0].total_usd == Decimal("0.003000")


def test_an_invocation_before_settlement_is_held_then_charged() -> None:
    books = Books()
    held = books.feed(invocation("wu1"))
    assert [type(f) for f in held] == [LedgerChargeHeld]
    assert books.line_items == []
    books.feed(accepted("wu1"))
    assert {i.line_item_type for i in books.billed()} == {"workunit_cpu", "llm_tokens"}
    assert list(books.ledger_state.items("h:")) == []  # nothing held any more


def test_invocations_of_other_attempts_are_leakage_with_the_amount_kept() -> None:
    books = Books()
    books.feed(invocation("wu1", attempt=1), invocation("wu1", attempt=2),
               accepted("wu1", attempt=2))
    books.feed(invocation("wu1", attempt=1, n=1))  # a fenced attempt's late invocation
    (charged,) = [i for i in books.billed() if i.line_item_type == "llm_tokens"]
    assert charged.attempt_index == 2
    leaks = books.leakage()
    assert len(leaks) == 2
    assert all(i.attempt_index == 1 and i.total_usd > 0 for i in leaks)
    assert all(i.leakage_reason == "attempt_not_accepted:1!=2" for i in leaks)


def test_a_rejected_completion_is_leakage_and_does_not_settle_the_unit() -> None:
    books = Books()
    books.feed(accepted("wu1", attempt=1, ok=False, reason="lease_expired"))
    (leak,) = books.leakage()
    assert leak.leakage_reason == "completion_rejected:lease_expired"
    assert books.billed() == []
    books.feed(accepted("wu1", attempt=2))
    assert len(books.billed()) == 1


def test_abandoned_and_cancelled_units_leak_every_invocation() -> None:
    books = Books()
    books.feed(invocation("wu1"), failed_final("wu1"), invocation("wu1", n=1))
    books.feed(invocation("wu2"), cancelled("wu2"))
    assert books.billed() == []
    assert sorted(i.leakage_reason for i in books.leakage()) == ["unit_cancelled", "unit_failed",
                                                                 "unit_failed"]


def test_a_second_settlement_of_a_settled_unit_charges_nothing() -> None:
    books = Books()
    books.feed(accepted("wu1"))
    assert books.feed(accepted("wu1", reason="operator_mark_done")) == []


def _line_items_in_any_order(events: list, seed: int) -> dict[str, LedgerLineItem]:
    books = Books()
    order = list(events)
    random.Random(seed).shuffle(order)
    books.feed(*order)
    return {i.line_item_id: i for i in books.line_items}


def test_the_same_inputs_give_the_same_line_items_whatever_their_interleaving() -> None:
    events = [invocation("wu1", attempt=1), invocation("wu1", attempt=2),
              accepted("wu1", attempt=2), invocation("wu2"), failed_final("wu2"),
              accepted("wu3", cpu="0.333333"), invocation("wu3", tokens_in=7, tokens_out=3)]
    reference = _line_items_in_any_order(events, 0)
    assert len(reference) == 6  # wu1: cpu, tokens, a leak; wu2: a leak; wu3: cpu, tokens
    for seed in range(1, 30):
        assert _line_items_in_any_order(events, seed) == reference


def test_a_long_run_wallet_equals_the_exact_sum_of_its_line_items() -> None:
    rng = random.Random(42)
    books = Books()
    expected = Decimal("0")
    for n in range(3000):
        wu = f"wu{n}"
        cpu = Decimal(rng.randrange(0, 10**7)) / 10**6
        tokens_in, tokens_out = rng.randrange(0, 5000), rng.randrange(0, 2000)
        books.feed(invocation(wu, tokens_in=tokens_in, tokens_out=tokens_out,
                              session=f"s{n % 17}"),
                   accepted(wu, cpu=str(cpu), session=f"s{n % 17}"))
        expected += money(cpu * Decimal("0.0005"))
        expected += money(Decimal(tokens_in) * Decimal("0.002") / 1000)
        expected += money(Decimal(tokens_out) * Decimal("0.002") / 1000)
    latest = {w.wallet_id: w for w in books.wallets}
    wallets = Wallet.combine(latest.values())
    tenant = wallets[tenant_wallet_id("acme")]
    assert tenant.debit_usd == sum((i.total_usd for i in books.billed()), Decimal("0"))
    assert tenant.debit_usd == expected
    assert tenant.record_count == 6000
    sessions = [w for w in wallets.values() if w.execution_session_id]
    assert len(sessions) == 17
    assert sum((w.debit_usd for w in sessions), Decimal("0")) == expected


def test_folding_the_decoded_facts_rebuilds_ledger_and_wallet_state() -> None:
    """What replay does: evolve with the facts as read back from Avro, not the live objects."""
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.runtime import fingerprint_items

    codec = SingleObjectCodec()
    books = Books()
    books.feed(invocation("wu1"), invocation("wu2", attempt=2), accepted("wu1"),
               accepted("wu5", ok=False, reason="lease_expired"), failed_final("wu3"),
               invocation("wu4"), invocation("wu3"))
    for reducer, live, facts in ((books.ledger, books.ledger_state, books.facts),
                                 (books.folder, books.wallet_state, books.wallets)):
        rebuilt = MemoryState()
        for fact in facts:
            reducer.evolve(rebuilt, codec.decode(codec.encode(fact)))
        state_only = [(k, v) for k, v in live.raw_items() if k.startswith(b"s\x00")]
        assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(state_only)
    held = list(itertools.islice(MemoryState.items(books.ledger_state, "h:"), 10))
    assert len(held) == 2  # wu2 and wu4 are still held
