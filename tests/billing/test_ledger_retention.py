"""The ledger forgets a settled unit a retention horizon after its settlement, by a fact:
its partition stays the size of a horizon's work, a redelivered settlement older than what
it forgot charges nothing, and a very late invocation is leakage instead of held for ever."""

from __future__ import annotations

from onceflow.schemas import SingleObjectCodec, StateRetired
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from tests.billing.fixtures import T0, Books, accepted, invocation

H = 160_000  # ten seconds a step


def _retired(books: Books) -> list[str]:
    return [wu for f in books.facts if isinstance(f, StateRetired) for wu in f.work_unit_ids]


def test_units_are_forgotten_a_horizon_after_their_settlement_and_no_sooner() -> None:
    books = Books(horizon_ms=H)
    books.feed(accepted("wu-old", at=T0))
    books.feed(accepted("wu-mid", at=T0 + H // 2))
    books.feed(accepted("wu-3", at=T0 + H - 1))  # not yet a horizon after wu-old
    assert _retired(books) == []
    books.feed(accepted("wu-4", at=T0 + H + 20_000))
    assert _retired(books) == ["wu-old"]
    books.feed(accepted("wu-5", at=T0 + H + H // 2 + 20_000))
    assert _retired(books) == ["wu-old", "wu-mid"]
    assert [k for k, _ in books.ledger_state.items("u:")] == ["u:wu-3", "u:wu-4", "u:wu-5"]


def test_state_stays_the_size_of_a_horizon_however_many_units_settle() -> None:
    books = Books(horizon_ms=H)
    sizes = []
    for i in range(4_000):  # one settlement every 200 ms of logged time: 800 a horizon
        books.feed(accepted(f"wu-{i}", at=T0 + 200 * i))
        if i % 400 == 399:
            sizes.append(len(books.ledger_state))
    assert max(sizes[3:]) - min(sizes[3:]) <= 2 * (800 // 16) + 4, sizes
    assert max(sizes) < 2 * 1_000


def test_a_redelivered_settlement_of_a_forgotten_unit_charges_nothing() -> None:
    books = Books(horizon_ms=H)
    first = accepted("wu-1", at=T0)
    books.feed(first)
    books.feed(accepted("wu-2", at=T0 + 2 * H))
    assert _retired(books) == ["wu-1"]
    charged = len(books.billed())
    assert books.feed(first) == []  # the same settlement, delivered again
    assert len(books.billed()) == charged


def test_an_invocation_older_than_what_was_forgotten_is_leakage_not_held_for_ever() -> None:
    books = Books(horizon_ms=H)
    books.feed(accepted("wu-1", at=T0))
    books.feed(accepted("wu-2", at=T0 + 2 * H))
    late = books.feed(invocation("wu-1", at=T0 - 5))
    assert [i.leakage_reason for i in books.leakage()] == ["unit_beyond_horizon"]
    assert late and not list(books.ledger_state.items("h:"))


def test_replay_of_the_ledgers_facts_forgets_the_same_units() -> None:
    codec = SingleObjectCodec()
    books = Books(horizon_ms=H)
    for i in range(300):
        books.feed(invocation(f"wu-{i}", at=T0 + 1_000 * i - 10), accepted(f"wu-{i}", at=T0 + 1_000 * i))
    assert _retired(books)
    rebuilt = MemoryState()
    for fact in books.facts:
        books.ledger.evolve(rebuilt, codec.decode(codec.encode(fact)))
    state_only = [(k, v) for k, v in books.ledger_state.raw_items() if k.startswith(b"s\x00")]
    assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(state_only)


def test_an_invocation_held_a_horizon_for_a_settlement_that_never_comes_is_let_go() -> None:
    books = Books(horizon_ms=H)
    books.feed(invocation("slow", at=T0))  # its unit was forgotten before the node reported
    assert books.leakage() == [] and list(books.ledger_state.items("h:"))
    books.feed(accepted("other", at=T0 + H + 20_000))
    assert [i.leakage_reason for i in books.leakage()] == ["unit_beyond_horizon"]
    assert not list(books.ledger_state.items("h:"))
    assert not list(books.ledger_state.items("x:held:"))


def test_a_settlement_that_bills_a_held_invocation_is_not_let_go_twice() -> None:
    books = Books(horizon_ms=H)
    books.feed(invocation("wu-1", at=T0))
    books.feed(accepted("wu-1", at=T0 + H + 20_000))  # settles it and checks the step
    items = [i.line_item_id for i in books.line_items]
    assert len(items) == len(set(items)) == 2 and not books.leakage()
