"""The scheduler's typed unit record: it survives state, and its index follows its status."""

from __future__ import annotations

import pytest

from onceflow.schemas import ContentRef
from onceflow.streams.scheduler import TERMINAL, UnitRecord, UnitStatus
from onceflow.streams.state import MemoryState
from tests.streams.scheduler.fixtures import T0, submit

REF = ContentRef(sha256="cd" * 32, size=7)


def _unit() -> UnitRecord:
    event = submit("wu-1", kind="llm_pod", prompt="hi", depends_on=["p1", "p2"],
                   parameters={"max_tokens": "5"}, input_ref=REF)
    return UnitRecord.submitted(event, "digest")


def test_a_record_reads_back_from_state_as_it_was_stored() -> None:
    unit = _unit().but(status="granted", attempt=2, node="n1", incarnation="i",
                       parents={"p1": REF, "p2": None}, result_ref=REF, deadline=T0 + 5)
    state = MemoryState()
    state.set("u:wu-1", unit.to_state())
    assert UnitRecord.load(state, "wu-1") == unit
    assert UnitRecord.load(state, "other") is None


@pytest.mark.parametrize(("status", "kind"), [
    ("scheduled", "lease"), ("granted", "lease"), ("retry_wait", "retry"),
    ("deferred", "deferred"), ("waiting", None), ("needs_operator", None),
    *((s, None) for s in sorted(TERMINAL)),
])
def test_the_index_a_unit_is_in_follows_from_its_status(status: UnitStatus,
                                                         kind: str | None) -> None:
    unit = _unit().but(status=status, deadline=T0 + 9, retry_at=T0 + 7)
    entry = unit.index_entry()
    assert (entry[0] if entry else None) == kind
    if kind == "retry":
        assert entry == ("retry", T0 + 7)
    if kind == "deferred":
        assert entry == ("deferred", unit.submitted_at)


def test_parents_are_done_once_each_dependency_has_an_answer() -> None:
    unit = _unit()
    assert not unit.parents_done()
    assert not unit.but(parents={"p1": REF}).parents_done()
    assert unit.but(parents={"p1": REF, "p2": None}).parents_done()


def test_a_changed_copy_changes_exactly_the_fields_named() -> None:
    from dataclasses import fields

    unit = _unit()
    assert unit.but() == unit
    for f in fields(UnitRecord):
        value = {"spec": _unit().spec.__class__.of(submit("wu-2")), "parents": {"p": None},
                 "result_ref": REF, "staged": True}.get(f.name, 4242 if isinstance(
                     getattr(unit, f.name), int) else "changed")
        changed = unit.but(**{f.name: value})
        assert getattr(changed, f.name) == value, f.name
        assert all(getattr(changed, g.name) == getattr(unit, g.name)
                   for g in fields(UnitRecord) if g.name != f.name), f.name
