"""The ledger forgets a settled unit when the scheduler does (its `processor.state.retired`,
read in order after every fact of the unit): its partition stays the size of a horizon's
work, and an invocation held a horizon for a settlement that never comes is let go as
leakage instead of held for ever."""

from __future__ import annotations

from onceflow.schemas import SingleObjectCodec, StateRetired
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from tests.billing.fixtures import T0, Books, accepted, invocation

H = 160_000


def forgotten(*units: str, at: int, processor: str = "scheduler") -> StateRetired:
    """The scheduler's word that it forgot `units`, on its tick at `at`."""
    return StateRetired(event_id=f"retired-{at}-{processor}", occurred_at=at,
                        processor=processor, horizon_ms=H, inputs_until=T0,
                        work_unit_ids=list(units))


def _retired(books: Books) -> list[str]:
    return [wu for f in books.facts if isinstance(f, StateRetired) for wu in f.work_unit_ids]


def test_the_ledger_forgets_what_the_scheduler_forgets_once_it_has_settled_it() -> None:
    books = Books(horizon_ms=H)
    books.feed(accepted("wu-1", at=T0), accepted("wu-2", at=T0 + 5))
    books.feed(forgotten("wu-1", "never-seen", at=T0 + H + 10))
    assert _retired(books) == ["wu-1"]  # what it never settled it has nothing of
    assert [k for k, _ in books.ledger_state.items("u:")] == ["u:wu-2"]
    books.feed(forgotten("wu-2", at=T0 + H + 20, processor="ledger"))  # not the scheduler's
    assert _retired(books) == ["wu-1"]


def test_state_stays_the_size_of_a_horizon_however_many_units_settle() -> None:
    books = Books(horizon_ms=H)
    sizes = []
    for i in range(4_000):  # one settlement every 200 ms of logged time: 800 a horizon
        at = T0 + 200 * i
        books.feed(accepted(f"wu-{i}", at=at))
        if i % 10 == 9 and i >= 800:  # the scheduler forgets what settled a horizon ago
            books.feed(forgotten(*[f"wu-{j - 800}" for j in range(i - 9, i + 1)], at=at))
        if i % 400 == 399:
            sizes.append(len(books.ledger_state))
    assert max(sizes[3:]) <= 810 and min(sizes[3:]) >= 790, sizes


def test_an_invocation_held_a_horizon_for_a_settlement_that_never_comes_is_let_go() -> None:
    books = Books(horizon_ms=H)
    books.feed(invocation("slow", at=T0))  # its unit was forgotten before the node reported
    assert books.leakage() == [] and list(books.ledger_state.items("h:"))
    books.feed(forgotten(at=T0 + H - 1))
    assert books.leakage() == []  # not yet a horizon
    books.feed(forgotten(at=T0 + H + 1))
    assert [i.leakage_reason for i in books.leakage()] == ["unit_beyond_horizon"]
    assert not list(books.ledger_state.items("h:"))
    assert not list(books.ledger_state.items("x:held:"))


def test_replay_of_the_ledgers_facts_forgets_the_same_units() -> None:
    codec = SingleObjectCodec()
    books = Books(horizon_ms=H)
    for i in range(300):
        books.feed(invocation(f"wu-{i}", at=T0 + 1_000 * i - 10),
                   accepted(f"wu-{i}", at=T0 + 1_000 * i))
        if i >= 200:
            books.feed(forgotten(f"wu-{i - 200}", at=T0 + 1_000 * i + 1))
    assert len(_retired(books)) == 100
    rebuilt = MemoryState()
    for fact in books.facts:
        books.ledger.evolve(rebuilt, codec.decode(codec.encode(fact)))
    state_only = [(k, v) for k, v in books.ledger_state.raw_items() if k.startswith(b"s\x00")]
    assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(state_only)
