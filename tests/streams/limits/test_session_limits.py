"""A session's execution limits, counted by the limiter across every scheduler partition."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from onceflow.schemas import (
    ControlRequested,
    Event,
    SessionLimitCrossed,
    SessionLimits,
    SessionLimitsChanged,
    SessionLimitsSet,
)
from onceflow.streams.limits import LIMITS_ACTOR, SessionUsage
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from onceflow.streams.types import Routed
from tests.streams.limits.fixtures import T0, LimiterHarness, charged, release, request, settled


def step(wu: str, at: int = T0, attempt: int = 1, kind: str = "cpu", stok: int = 0,
         **limits: Any) -> Any:
    policy = limits.pop("on_limit", "park")
    return request(wu, [], at=at, attempt=attempt, kind=kind, session_tokens=stok,
                   session_limits=SessionLimits(on_limit=policy, **limits))


def crossings(facts: list[Event]) -> list[tuple[str, str]]:
    return [(f.limit, f.threshold) for f in facts if isinstance(f, SessionLimitCrossed)]


def controls(h: LimiterHarness) -> list[ControlRequested]:
    return [o.event for o in h.outputs
            if isinstance(o, Routed) and isinstance(o.event, ControlRequested)]


def test_steps_are_counted_across_the_session_and_the_one_past_the_limit_is_refused() -> None:
    h = LimiterHarness()
    facts = h.feed(*(step(f"u{i}", at=T0 + i, max_steps=5) for i in range(5)))
    assert h.granted(facts) == ["u0", "u1", "u2", "u3", "u4"]
    assert crossings(facts) == [("max_steps", "warning")]  # at 4 of 5, once
    facts = h.feed(step("u5", at=T0 + 9, max_steps=5))
    (denied,) = h.denied(facts)
    assert denied.reason_code == "SESSION_LIMIT" and denied.on_limit == "park"
    (crossed,) = [f for f in facts if isinstance(f, SessionLimitCrossed)]
    assert (crossed.limit, crossed.threshold, crossed.used, crossed.maximum) == (
        "max_steps", "reached", "5", "5")
    assert crossed.steps == 5 and "reached its max_steps: 5 of 5" in crossed.detail
    # the session is parked: its pause goes to the schedulers, from the limits actor
    (pause,) = controls(h)
    assert (pause.action, pause.scope, pause.requested_by) == ("pause", "session", LIMITS_ACTOR)
    assert pause.execution_session_id == "s1" and "max_steps" in pause.reason
    # anything else the session asks for is refused, and the limit is recorded only once
    later = h.feed(step("u6", at=T0 + 10, max_steps=5))
    assert h.denied(later) and crossings(later) == []


def test_a_retry_is_an_attempt_but_not_a_step() -> None:
    h = LimiterHarness()
    h.feed(step("a", max_steps=1, max_attempts=3))
    h.feed(release("a", at=T0 + 1, reason="attempt_ended"))
    assert h.granted(h.feed(step("a", at=T0 + 2, attempt=2, max_steps=1, max_attempts=3))) == ["a"]
    h.feed(release("a", at=T0 + 3, reason="attempt_ended"))
    assert h.granted(h.feed(step("a", at=T0 + 4, attempt=3, max_steps=1, max_attempts=3))) == ["a"]
    h.feed(release("a", at=T0 + 5, reason="attempt_ended"))
    facts = h.feed(step("a", at=T0 + 6, attempt=4, max_steps=1, max_attempts=3))
    assert crossings(facts) == [("max_attempts", "reached")]
    usage = SessionUsage.load(h.state, "acme", "s1")
    assert usage is not None and (usage.steps, usage.attempts) == (1, 3)


def test_llm_calls_count_only_llm_attempts() -> None:
    h = LimiterHarness()
    facts = h.feed(step("c1", max_llm_calls=1), step("l1", at=T0 + 1, kind="llm_pod",
                                                     max_llm_calls=1),
                   step("c2", at=T0 + 2, max_llm_calls=1))
    assert h.granted(facts) == ["c1", "l1", "c2"]
    facts = h.feed(step("l2", at=T0 + 3, kind="llm_pod", max_llm_calls=1))
    assert crossings(facts) == [("max_llm_calls", "reached")]


def test_tokens_are_held_in_advance_waited_for_and_counted_as_billed() -> None:
    h = LimiterHarness()
    facts = h.feed(step("a", kind="llm_pod", stok=400, max_tokens=1000),
                   step("b", at=T0 + 1, kind="llm_pod", stok=400, max_tokens=1000))
    assert h.granted(facts) == ["a", "b"]
    assert crossings(facts) == [("max_tokens", "warning")]  # 800 held of 1000
    # a third call fits only once the running ones are billed: it waits
    (queued,) = h.queued(h.feed(step("c", at=T0 + 2, kind="llm_pod", stok=400,
                                     max_tokens=1000)))
    assert queued.scope == "budget:tokens:acme/s1"
    assert "0 billed, 800 held for running calls" in queued.detail
    # a used 150 tokens: its hold ends and c fits (150 + 400 held + 400)
    h.feed(charged("a", "0.001", at=T0 + 10, tokens_in=100, tokens_out=50))
    assert h.granted(h.feed(settled("a", at=T0 + 11))) == ["c"]
    usage = SessionUsage.load(h.state, "acme", "s1")
    assert usage is not None and (usage.tokens, usage.tokens_held) == (150, 800)
    # billed tokens that leave no room for a call: the limit is reached
    h.feed(charged("b", "0.01", at=T0 + 12, tokens_in=300, tokens_out=300), settled("b", T0 + 13))
    facts = h.feed(step("d", at=T0 + 14, kind="llm_pod", stok=400, max_tokens=1000))
    assert crossings(facts) == [("max_tokens", "reached")]


def test_wall_time_runs_in_logged_time_from_the_first_step() -> None:
    h = LimiterHarness()
    h.feed(step("a", at=T0, max_wall_time_ms=10_000))
    facts = h.feed(step("b", at=T0 + 8_000, max_wall_time_ms=10_000))
    assert h.granted(facts) == ["b"] and crossings(facts) == [("max_wall_time_ms", "warning")]
    facts = h.feed(step("c", at=T0 + 10_000, max_wall_time_ms=10_000))
    assert crossings(facts) == [("max_wall_time_ms", "reached")]


def test_cost_is_the_session_budget_and_reaching_it_parks_the_session_not_just_the_unit() -> None:
    h = LimiterHarness()
    limits = {"max_cost_usd": Decimal("1")}
    first = request("a", [], hold_usd=Decimal("0.5"), session_budget_usd=Decimal("1"),
                    session_limits=SessionLimits(**limits))
    assert h.granted(h.feed(first)) == ["a"]
    h.feed(charged("a", "0.9", at=T0 + 1), settled("a", at=T0 + 2))
    facts = h.feed(request("b", [], at=T0 + 3, hold_usd=Decimal("0.5"),
                           session_budget_usd=Decimal("1"),
                           session_limits=SessionLimits(**limits)))
    (denied,) = h.denied(facts)
    assert denied.reason_code == "SESSION_LIMIT"
    assert crossings(facts) == [("max_cost_usd", "reached")]


def test_the_cancel_policy_cancels_the_session() -> None:
    h = LimiterHarness()
    h.feed(step("a", max_steps=1, on_limit="cancel"))
    (denied,) = h.denied(h.feed(step("b", at=T0 + 1, max_steps=1, on_limit="cancel")))
    assert denied.on_limit == "cancel"
    (cancel,) = controls(h)
    assert (cancel.action, cancel.requested_by) == ("cancel", LIMITS_ACTOR)


def test_raising_a_limit_resumes_a_parked_session_and_a_raise_too_small_does_not() -> None:
    h = LimiterHarness()
    h.feed(step("a", max_steps=1), step("b", at=T0 + 1, max_steps=1))

    def raise_to(n: int, at: int) -> SessionLimitsChanged:
        (changed,) = h.feed(SessionLimitsSet(
            event_id=f"set-{n}", occurred_at=at, tenant_id="acme", execution_session_id="s1",
            session_limits=SessionLimits(max_steps=n), requested_by="op", reason="more"))
        assert isinstance(changed, SessionLimitsChanged)
        return changed

    assert not raise_to(1, T0 + 2).resumed  # 1 step used of 1: still no room
    assert raise_to(3, T0 + 3).resumed
    resume = controls(h)[-1]
    assert (resume.action, resume.requested_by) == ("resume", LIMITS_ACTOR)
    assert resume.reason == "limits raised by op: more"
    assert h.granted(h.feed(step("b", at=T0 + 4, max_steps=1))) == ["b"]  # stored limits win


def test_limits_on_a_live_session_replay_to_the_same_state() -> None:
    h = LimiterHarness()
    h.feed(step("a", kind="llm_pod", stok=300, max_tokens=1000, max_steps=3),
           step("b", at=T0 + 1, max_steps=3, max_tokens=1000),
           charged("a", "0.01", at=T0 + 2, tokens_in=50, tokens_out=50), settled("a", T0 + 3),
           step("c", at=T0 + 4, max_steps=3, max_tokens=1000),
           step("d", at=T0 + 5, max_steps=3, max_tokens=1000))
    replayed = MemoryState()
    for fact in h.facts():
        h.limiter.evolve(replayed, fact)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(h.state.raw_items())


def test_a_limit_reached_mid_attempt_lets_the_running_call_finish_and_be_counted() -> None:
    h = LimiterHarness()
    h.feed(step("a", kind="llm_pod", stok=300, max_steps=1, max_tokens=1000))
    # the session reaches its step limit while a's call runs
    facts = h.feed(step("b", at=T0 + 1, kind="llm_pod", stok=300, max_steps=1,
                        max_tokens=1000))
    assert crossings(facts) == [("max_steps", "reached")]
    # a finishes: its tokens are billed and counted, its hold ends, nothing is granted
    facts = h.feed(charged("a", "0.01", at=T0 + 5, tokens_in=100, tokens_out=120),
                   settled("a", at=T0 + 6))
    assert h.granted(facts) == [] and h.denied(facts) == []
    usage = SessionUsage.load(h.state, "acme", "s1")
    assert usage is not None
    assert (usage.steps, usage.tokens, usage.tokens_held, usage.reached) == (
        1, 220, 0, "max_steps")
