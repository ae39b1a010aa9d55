"""The anomaly checker and reconciliation: each check finds its case and only its case."""

from __future__ import annotations

from decimal import Decimal

from onceflow.billing import AnomalyChecker, BillingRecords, reconcile
from onceflow.schemas import BillingAnomaly, ClaimGranted, Event, LedgerLineItem, WorkUnitScheduled
from onceflow.settings import BillingSettings
from onceflow.streams.state import MemoryState
from tests.billing.fixtures import T0, Books, accepted, invocation


def scheduled(wu: str, attempt: int = 1) -> WorkUnitScheduled:
    return WorkUnitScheduled(event_id=f"sch-{wu}-{attempt}", occurred_at=T0, work_unit_id=wu,
                             selected_node_id="n1", attempt_index=attempt, score=1.0,
                             eligible_node_count=1, reason_code="best_score",
                             scheduling_epoch=1, decided_at=T0, lease_expires_at=T0 + 1)


def granted(wu: str, attempt: int = 1) -> ClaimGranted:
    return ClaimGranted(event_id=f"gr-{wu}-{attempt}", occurred_at=T0, work_unit_id=wu,
                        node_id="n1", attempt_index=attempt)


def check(*events: Event) -> list[BillingAnomaly]:
    checker, state = AnomalyChecker(), MemoryState()
    found: list[BillingAnomaly] = []
    for event in events:
        found.extend(f for f in checker.decide(state, event) if isinstance(f, BillingAnomaly))
    return found


def ledger_of(*events: Event) -> list[Event]:
    books = Books()
    books.feed(*events)
    return list(books.line_items)


def test_a_clean_life_finds_nothing() -> None:
    done = accepted("wu1")
    assert check(scheduled("wu1"), granted("wu1"), invocation("wu1"), done,
                 *ledger_of(invocation("wu1"), done)) == []


def test_a_grant_without_a_schedule_and_a_completion_without_a_grant() -> None:
    found = check(granted("wu1"), accepted("wu2"))
    assert [f.check for f in found] == ["claim_without_schedule", "completion_without_grant"]
    assert found[0].subject_id == "wu1#1"


def test_what_settles_without_running_needs_no_grant() -> None:
    """An operator's result, a person's answer to an input step, its default (the
    simulation found the last two flagged)."""
    for reason in ("operator_mark_done", "human_input", "input_default"):
        assert check(accepted("wu1", reason=reason)) == [], reason


def test_two_line_items_for_one_source_are_a_duplicate() -> None:
    (item,) = [i for i in ledger_of(accepted("wu1")) if isinstance(i, LedgerLineItem)]
    twin = item.model_copy(update={"line_item_id": "other", "event_id": "other"})
    found = check(item, item, twin)
    assert [f.check for f in found] == ["duplicate_line_item"]
    assert (found[0].expected, found[0].observed) == (item.line_item_id, "other")


def test_negative_unrounded_and_unbalanced_amounts_are_malformed() -> None:
    (item,) = [i for i in ledger_of(accepted("wu1")) if isinstance(i, LedgerLineItem)]
    cases = {
        "negative": {"total_usd": Decimal("-0.5"), "subtotal_cpu_usd": Decimal("-0.5")},
        "more than 6": {"total_usd": Decimal("0.0000001"),
                        "subtotal_cpu_usd": Decimal("0.0000001")},
        "not the sum": {"total_usd": Decimal("9")},
    }
    for n, (words, update) in enumerate(cases.items()):
        bad = item.model_copy(update={**update, "source_event_id": f"src{n}"})
        (found,) = check(bad)
        assert found.check == "malformed_amount"
        assert words in found.message


def test_tokens_billed_differently_from_the_invocation_are_flagged_either_order() -> None:
    inv = invocation("wu1", tokens_in=100, tokens_out=50)
    done = accepted("wu1")
    items = [i for i in ledger_of(inv, done) if isinstance(i, LedgerLineItem)]
    tampered = [i.model_copy(update={"llm_tokens": 149}) if i.line_item_type == "llm_tokens"
                else i for i in items]
    for order in ([inv, *tampered], [*tampered, inv]):
        found = [f for f in check(*order) if f.check == "token_mismatch"]
        assert len(found) == 1
        assert (found[0].expected, found[0].observed) == ("150", "149")


def test_a_charge_for_an_attempt_that_was_not_accepted_is_flagged() -> None:
    items = [i for i in ledger_of(invocation("wu1"), accepted("wu1"))
             if isinstance(i, LedgerLineItem) and i.line_item_type == "llm_tokens"]
    wrong = items[0].model_copy(update={"attempt_index": 3})
    found = check(scheduled("wu1"), granted("wu1"), wrong, accepted("wu1"))
    assert [f.check for f in found] == ["billed_unaccepted_attempt"]


def records_of(books: Books) -> BillingRecords:
    from onceflow.schemas import LedgerChargeHeld, LedgerUnitSettled

    latest = {w.wallet_id: w for w in books.wallets}
    return BillingRecords(
        line_items=books.line_items,
        held=[f for f in books.facts if isinstance(f, LedgerChargeHeld)],
        settled=[f for f in books.facts if isinstance(f, LedgerUnitSettled)],
        wallets=list(latest.values()),
    )


def test_reconcile_finds_nothing_in_honest_books() -> None:
    books = Books()
    invs = [invocation(f"wu{n}", session=f"s{n % 3}") for n in range(9)]
    books.feed(*invs, *(accepted(f"wu{n}", session=f"s{n % 3}") for n in range(9)))
    records = records_of(books)
    records.invocations = invs
    assert reconcile(records, BillingSettings()) == []


def test_reconcile_finds_a_wallet_that_disagrees_with_its_line_items() -> None:
    books = Books()
    books.feed(accepted("wu1", cpu="2"))
    records = records_of(books)
    records.line_items.append(records.line_items[-1].model_copy(update={
        "line_item_id": "extra", "event_id": "extra", "source_event_id": "x"}))
    (found,) = reconcile(records, BillingSettings())
    assert found.check == "session_total_mismatch"
    assert (found.expected, found.observed) == ("0.002000", "0.001000")


def test_reconcile_finds_tokens_billed_differently_from_what_was_used() -> None:
    books = Books()
    inv = invocation("wu1", tokens_in=10, tokens_out=5)
    books.feed(inv, accepted("wu1"))
    records = records_of(books)
    records.invocations = [inv, invocation("wu9", tokens_in=99)]  # wu9: not read by the ledger
    records.line_items = [i.model_copy(update={"llm_tokens": 12})
                          if i.line_item_type == "llm_tokens" else i for i in records.line_items]
    (found,) = reconcile(records, BillingSettings())
    assert found.check == "session_tokens_mismatch"
    assert (found.expected, found.observed) == ("15", "12")


def test_reconcile_finds_a_session_far_above_its_tenant_median() -> None:
    books = Books()
    books.feed(*(accepted(f"wu{n}", cpu="1", session=f"s{n}") for n in range(6)))
    books.feed(accepted("big", cpu="50", session="s-big"))
    found = reconcile(records_of(books), BillingSettings())
    assert [(f.check, f.subject_id, f.severity) for f in found] == [
        ("cost_spike", "acme/s-big", "warning")]
    # the same run reconciled again finds the same finding, with the same id
    assert [f.event_id for f in reconcile(records_of(books), BillingSettings())] == \
        [f.event_id for f in found]


def test_reconcile_compares_a_lagging_wallet_with_only_what_it_folded() -> None:
    from onceflow.settings import OnceflowSettings
    from onceflow.streams.topics import TopicCatalog

    ledger = TopicCatalog(OnceflowSettings())["ledger"]
    books = Books()
    books.feed(*(accepted(f"wu{n}", cpu="1", session=f"s{n % 2}") for n in range(20)))
    lagging = {w.wallet_id: w for w in books.wallets[:15]}  # the wallets seen 15 updates ago
    books.feed(*(accepted(f"wu{n}", cpu="1", session=f"s{n % 2}") for n in range(20, 30)))
    records = records_of(books)
    records.wallets = list(lagging.values())
    records.partition_of = {i.line_item_id: ledger.partition_of(i.work_unit_id or "")
                            for i in records.line_items}
    assert reconcile(records, BillingSettings()) == []
    # the same lag compared with every line item would look like a loss
    blind = BillingRecords(line_items=records.line_items, wallets=records.wallets)
    assert {f.check for f in reconcile(blind, BillingSettings())} == {"session_total_mismatch"}
    first = next(i for i, w in enumerate(records.wallets) if w.scope == "session")
    wrong = records.wallets[first].model_copy(update={"total_debit_usd": Decimal("9")})
    records.wallets = [*records.wallets[:first], wrong, *records.wallets[first + 1:]]
    assert [f.check for f in reconcile(records, BillingSettings())] == ["session_total_mismatch"]


def test_a_retired_unit_leaves_nothing_behind_in_the_checker() -> None:
    from onceflow.schemas import StateRetired

    checker, state = AnomalyChecker(), MemoryState()
    life = [scheduled("wu1"), granted("wu1"), invocation("wu1"), scheduled("wu2")]
    done = accepted("wu1")
    for event in [*life, done, *ledger_of(invocation("wu1"), done)]:
        checker.decide(state, event)
    assert any(k.split(":")[1] == "wu1" for k, _ in state.items())
    checker.decide(state, StateRetired(event_id="r", occurred_at=T0, processor="scheduler",
                                       horizon_ms=1, inputs_until=T0, work_unit_ids=["wu1"]))
    assert [k for k, _ in state.items()] == ["sch:wu2:1"]
