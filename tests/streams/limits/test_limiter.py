"""The limiter: slots per scope, all of a unit's scopes at once, granted in order."""

from __future__ import annotations

from onceflow.schemas import SlotGranted, SlotQueued, SlotRequested
from onceflow.streams.limits import Limiter, ScopeLimits
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


def _ask(wu: str, tenant: str, at: int, *, cost: float = 1.0, priority: str = "p2"
         ) -> SlotRequested:
    return SlotRequested(event_id=f"req-{wu}", occurred_at=at, work_unit_id=wu, tenant_id=tenant,
                         attempt_index=1, scopes=["global"], cost=cost,
                         priority=priority)  # type: ignore[arg-type]


def _drain(h: LimiterHarness, holder: str, n: int) -> list[str]:
    """Release the holder, then each grantee in turn: the order the queue is served in."""
    order = []
    for i in range(n):
        (granted,) = h.granted(h.feed(release(holder, at=T0 + 1000 + i)))
        order.append(granted)
        holder = granted
    return order


def _fair_harness(weights: dict[str, float] | None = None) -> LimiterHarness:
    h = LimiterHarness({"global": 1})
    h.limiter.limits = ScopeLimits(per_scope={"global": 1}, weights=weights or {})
    h.feed(_ask("first", "acme", T0))
    return h


def test_a_tenant_with_a_backlog_does_not_keep_a_later_tenant_waiting_behind_it() -> None:
    h = _fair_harness()
    h.feed(*(_ask(f"a{i}", "acme", T0 + i) for i in range(6)),
           *(_ask(f"b{i}", "globex", T0 + 10 + i) for i in range(2)))
    assert _drain(h, "first", 8) == ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"]


def test_a_tenants_weight_is_its_share() -> None:
    h = _fair_harness({"globex": 2.0})
    h.feed(*(_ask(f"a{i}", "acme", T0 + i) for i in range(4)),
           *(_ask(f"b{i}", "globex", T0 + 10 + i) for i in range(4)))
    assert _drain(h, "first", 6) == ["b0", "a0", "b1", "b2", "a1", "b3"]


def test_the_share_is_of_cost_not_of_units() -> None:
    h = _fair_harness()
    h.feed(_ask("big", "acme", T0 + 1, cost=5.0),
           *(_ask(f"b{i}", "globex", T0 + 10 + i) for i in range(4)))
    assert _drain(h, "first", 5) == ["b0", "b1", "b2", "b3", "big"]


def test_higher_priority_is_served_first() -> None:
    h = _fair_harness()
    h.feed(*(_ask(f"a{i}", "acme", T0 + i) for i in range(3)),
           _ask("urgent", "globex", T0 + 10, priority="p0"))
    assert _drain(h, "first", 4) == ["urgent", "a0", "a1", "a2"]
