"""Pure parts of the runtime: reducer apply, state stores, fact groups, fingerprints."""

from __future__ import annotations

from pathlib import Path

from onceflow.schemas import DecisionClosed, Event, SingleObjectCodec
from onceflow.streams.examples.submission_counter import SubmissionCounted, SubmissionCounter
from onceflow.streams.runtime.facts import FactGroups, FactRecord, fold_fact_records
from onceflow.streams.runtime.fingerprint import fingerprint_items, fingerprint_partitions
from onceflow.streams.state import MemoryState, open_partition_store
from tests.fixtures import submitted


def test_apply_emits_one_fact_per_submission_and_counts_resubmissions() -> None:
    reducer = SubmissionCounter()
    state = MemoryState()
    _, out1 = reducer.apply(state, submitted(1, unit="wu-a"))
    _, out2 = reducer.apply(state, submitted(2, unit="wu-a"))
    assert [type(o) for o in out1 + out2] == [SubmissionCounted, SubmissionCounted]
    assert [o.count for o in out1 + out2] == [1, 2]  # type: ignore[union-attr]
    assert state.get("unit:wu-a") == {"count": 2, "tenant": "t2"}


def test_fact_ids_are_deterministic() -> None:
    a = SubmissionCounter().apply(MemoryState(), submitted(5))[1]
    b = SubmissionCounter().apply(MemoryState(), submitted(5))[1]
    assert a == b


def test_memory_state_values_cannot_be_mutated_behind_its_back() -> None:
    state = MemoryState()
    state.set("k", {"n": 1})
    value = state.get("k")
    value["n"] = 99
    assert state.get("k") == {"n": 1}


def test_items_are_in_byte_order() -> None:
    state = MemoryState()
    for key in ["b", "a", "B", "aa"]:
        state.set(key, 1)
    assert [k for k, _ in state.items()] == ["B", "a", "aa", "b"]


def test_rocksdb_ranges_end_at_their_bound_among_deleted_keys(tmp_path: Path) -> None:
    """Stored, deleted and pending keys merge in order, within [start, stop) and the prefix."""
    store = open_partition_store(tmp_path, "p", 0)
    for i in range(20):
        store.set(f"x:l:{i:03d}", i)
    store.set("x:m:000", "another prefix")
    store.set("x:l\xff", "just past the prefix")
    store.checkpoint()
    for i in range(3, 17):
        store.delete(f"x:l:{i:03d}")  # tombstones once checkpointed
    store.checkpoint()
    store.set("x:l:004", "pending")
    assert [k for k, _ in store.items("x:l:", stop="x:l:010")] == [
        "x:l:000", "x:l:001", "x:l:002", "x:l:004"]
    assert [k for k, _ in store.items("x:l:", start="x:l:003")] == [
        "x:l:004", "x:l:017", "x:l:018", "x:l:019"]
    assert [v for _, v in store.items("x:m:")] == ["another prefix"]
    store.close()


def test_rocksdb_store_checkpoint_is_atomic_with_offsets(tmp_path: Path) -> None:
    store = open_partition_store(tmp_path, "p", 0)
    store.set("x", 1)
    store.mark_seen("ev-1")
    store.set_input_offset("in", 7)
    store.checkpoint(fact_offset=3)
    store.set("x", 2)  # not checkpointed: lost with the process
    store.close()
    reopened = open_partition_store(tmp_path, "p", 0)
    assert reopened.get("x") == 1
    assert reopened.has_seen("ev-1")
    assert reopened.input_offset("in") == 7
    assert reopened.fact_offset() == 3
    assert not reopened.fresh


def test_rocksdb_and_memory_fingerprints_agree(tmp_path: Path) -> None:
    reducer = SubmissionCounter()
    mem = MemoryState()
    store = open_partition_store(tmp_path, "p", 0)
    for i in range(50):
        event = submitted(i, unit=f"wu-{i % 7}")
        for fact in reducer.decide(store, event):
            reducer.evolve(store, fact)
        store.mark_seen(event.event_id)
        for fact in reducer.decide(mem, event):
            reducer.evolve(mem, fact)
        mem.mark_seen(event.event_id)
        if i % 10 == 9:
            store.checkpoint(i)
    assert fingerprint_items(store.raw_items()) == fingerprint_items(mem.raw_items())
    store.set("extra", 1)
    assert fingerprint_items(store.raw_items()) != fingerprint_items(mem.raw_items())


def test_fingerprint_is_order_independent_but_partition_sensitive() -> None:
    items = [(b"a", b"1"), (b"b", b"2")]
    assert fingerprint_items(items) == fingerprint_items(list(reversed(items)))
    assert fingerprint_partitions({0: items, 1: []}) != fingerprint_partitions({0: [], 1: items})
    assert fingerprint_items([(b"ab", b"c")]) != fingerprint_items([(b"a", b"bc")])


def _record(cause: str, seq: int, total: int, offset: int) -> FactRecord:
    fact = submitted(offset)
    return FactRecord(cause, seq, total, fact, SingleObjectCodec().encode(fact), offset)


def test_fact_group_completes_only_when_its_last_fact_arrives() -> None:
    groups = FactGroups()
    assert groups.add(_record("c1", 1, 2, 0)) is None
    assert groups.add(_record("c2", 1, 1, 1)) is not None  # other causes interleave freely
    done = groups.add(_record("c1", 2, 2, 2))
    assert done is not None and [r.offset for r in done] == [0, 2]
    assert groups.pending == {}


def test_a_restarted_decision_replaces_the_held_tail() -> None:
    """A crash after fact 2 of 3: the redecided facts from position 2 replace the held ones."""
    groups = FactGroups()
    groups.add(_record("c", 1, 3, 0))
    groups.add(_record("c", 2, 3, 1))
    groups.add(_record("c", 2, 3, 5))
    done = groups.add(_record("c", 3, 3, 6))
    assert done is not None and [r.offset for r in done] == [0, 5, 6]


def test_a_closed_decision_folds_the_written_facts_and_not_the_closing_one() -> None:
    """Facts 1 and 2 of 3, then the shell's `DecisionClosed` at position 3 of 3."""

    class Folded(SubmissionCounter):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def evolve(self, state: object, fact: Event) -> None:
            self.seen.append(fact.event_id)

    closing = DecisionClosed(event_id="closed", occurred_at=0, causation_id="c",
                             processor="p", facts_kept=2)
    records = [_record("c", 1, 3, 0), _record("c", 2, 3, 1),
               FactRecord("c", 3, 3, closing, SingleObjectCodec().encode(closing), 2)]
    reducer, state = Folded(), MemoryState()
    folded = list(fold_fact_records(reducer, state, records, FactGroups()))
    assert [r.offset for r in folded] == [0, 1]
    assert reducer.seen == ["ev-0", "ev-1"]  # the reducer never sees the closing fact
    assert state.has_seen("c")


def test_the_shell_routes_for_reducers_that_route_and_skips_the_call_for_others() -> None:
    """The batched shell calls `route` per fact only for a reducer that defines it (in
    its class or on the instance); the others derive no outputs."""
    from onceflow.settings import OnceflowSettings
    from onceflow.streams.runtime import BatchedProcessor
    from onceflow.streams.types import Routed

    class Routing(SubmissionCounter):
        def route(self, fact: Event) -> list[Routed]:
            return [Routed("elsewhere", fact)]

    patched = SubmissionCounter()
    patched.route = lambda fact: [Routed("elsewhere", fact)]  # type: ignore[method-assign]
    settings = OnceflowSettings(bootstrap_servers="127.0.0.1:1")
    routes = {name: BatchedProcessor(r, settings, inputs=["in"], fact_topic="facts")._routes
              for name, r in [("plain", SubmissionCounter()), ("class", Routing()),
                              ("instance", patched)]}
    assert routes == {"plain": False, "class": True, "instance": True}
