"""The limiter: slots per scope, all of a unit's scopes at once, granted in order."""

from __future__ import annotations

from onceflow.schemas import SlotGranted, SlotQueued
from onceflow.streams.limits import Limiter
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from onceflow.streams.types import Routed
from tests.streams.limits.fixtures import T0, LimiterHarness, release, request

P = ["provider:openai"]


def test_requests_are_granted_up_to_the_limit_then_queued_naming_the_scope() -> None:
    h = LimiterHarness({"provider:openai": 2})
    facts = h.feed(request("a", P), request("b", P), request("c", P))
    assert h.granted(facts) == ["a", "b"]
    (queued,) = h.queued(facts)
    assert (queued.work_unit_id, queued.scope, queued.in_use, queued.limit) == (
        "c", "provider:openai", 2, 2)
    # grants and queue places go to the unit's scheduler partition
    routed = [o for o in h.outputs if isinstance(o, Routed)]
    assert {type(o.event) for o in routed} == {SlotGranted, SlotQueued}


def test_a_release_grants_the_waiting_requests_in_order() -> None:
    h = LimiterHarness({"provider:openai": 1})
    h.feed(request("a", P), request("b", P, at=T0 + 1), request("c", P, at=T0 + 2))
    facts = h.feed(release("a", at=T0 + 10))
    assert h.granted(facts) == ["b"]
    grant = next(f for f in facts if isinstance(f, SlotGranted))
    assert grant.waited_ms == 9 and grant.tenant_id == "acme"
    assert h.granted(h.feed(release("b", at=T0 + 20))) == ["c"]
    assert h.granted(h.feed(release("c", at=T0 + 30))) == []


def test_a_unit_needs_a_slot_in_every_scope_and_a_blocked_one_blocks_no_other() -> None:
    h = LimiterHarness({"tenant:acme": 1, "provider:openai": 1})
    h.feed(request("a", ["tenant:acme", "provider:openai"]))
    facts = h.feed(request("b", ["tenant:acme", "provider:openai"]),
                   request("c", ["tenant:other"]))
    assert h.granted(facts) == ["c"]  # an unlimited scope of its own: granted at once
    assert h.queued(facts)[0].scope == "tenant:acme"


def test_a_release_skips_a_waiting_request_that_still_does_not_fit() -> None:
    h = LimiterHarness({"model:x": 1, "model:y": 1})
    h.feed(request("x1", ["model:x"]), request("y1", ["model:y"]),
           request("x2", ["model:x"]), request("y2", ["model:y"]))
    assert h.granted(h.feed(release("y1"))) == ["y2"]


def test_giving_back_a_queue_place_frees_nothing_and_drops_the_request() -> None:
    h = LimiterHarness({"provider:openai": 1})
    h.feed(request("a", P), request("b", P), request("c", P))
    freed = h.feed(release("b", reason="cancelled"))
    assert len(freed) == 1 and h.granted(freed) == []
    assert h.granted(h.feed(release("a"))) == ["c"]


def test_a_request_seen_again_is_answered_again_without_counting_twice() -> None:
    h = LimiterHarness({"provider:openai": 1})
    h.feed(request("a", P))
    again = h.feed(request("a", P, at=T0 + 5))
    assert h.granted(again) == ["a"]
    assert h.queued(h.feed(request("b", P))) != []  # still one slot in use, not two
    h.feed(request("b", P, at=T0 + 6))  # waiting: asking again changes nothing
    assert h.granted(h.feed(release("a"))) == ["b"]


def test_releases_of_unknown_units_change_nothing() -> None:
    h = LimiterHarness({"provider:openai": 1})
    assert h.feed(release("nobody")) == []


def test_folding_the_facts_rebuilds_the_same_counts() -> None:
    h = LimiterHarness({"provider:openai": 2, "tenant:acme": 3})
    for i in range(12):
        h.feed(request(f"u{i}", ["tenant:acme", "provider:openai"] if i % 2 else P,
                       at=T0 + i))
        if i % 3 == 2:
            h.feed(release(f"u{i - 2}", at=T0 + i))
    replayed = MemoryState()
    fresh = Limiter(h.limiter.limits, h.limiter.reports)
    for fact in (o for o in h.outputs if not isinstance(o, Routed)):
        fresh.evolve(replayed, fact)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(h.state.raw_items())
