"""A session's DAG never waits forever: an unknown parent and a cycle in depends_on end
with a reason; a failed step of a session that fails fast cancels the session."""

from __future__ import annotations

from onceflow.schemas import (
    ControlRequested,
    Event,
    WorkUnitCancelled,
    WorkUnitDependencyProbe,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
)
from onceflow.streams.types import Routed
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)


def _ready() -> Harness:
    h = Harness()
    h.see(heartbeat("n1"))
    return h


def deliver(h: Harness) -> list[Event]:
    """Feed back, until none is left, what the scheduler sent between its partitions about
    dependencies and controls, each once (the harness keeps every partition's units in one
    state; the broker's consumers would dedupe a second delivery)."""
    facts: list[Event] = []
    seen: int = getattr(h, "delivered", 0)
    while seen < len(h.outputs):
        o = h.outputs[seen]
        seen += 1
        if isinstance(o, Routed) and isinstance(o.event, WorkUnitDependencyRegistered
                                                 | WorkUnitDependencyResolved
                                                 | WorkUnitDependencyProbe
                                                 | ControlRequested):
            facts += h.feed(o.event)
    h.delivered = seen  # type: ignore[attr-defined]
    return facts


def failures(h: Harness) -> dict[str, str]:
    return {f.work_unit_id or "": f.error_code for f in h.outputs
            if isinstance(f, WorkUnitFailed) and f.final}


def test_a_child_of_a_parent_nobody_submits_fails_saying_so_after_the_grace() -> None:
    h = _ready()
    grace = h.scheduler.ctx.cfg.unknown_parent_ms
    h.feed(submit("child", depends_on=["ghost"]))
    deliver(h)
    assert h.unit("child").status == "waiting"
    h.tick(T0 + grace - 1)
    deliver(h)
    assert h.unit("child").status == "waiting"  # the parent may still come
    h.tick(T0 + grace)
    deliver(h)
    assert failures(h) == {"child": "unknown_parent"}
    (failed,) = [f for f in h.outputs if isinstance(f, WorkUnitFailed)]
    assert "parent ghost was never submitted" in failed.error_reason
    assert h.state.get("o:ghost") is None  # nothing left to wait for
    assert_replay_equals_live(h)


def test_a_parent_submitted_after_its_child_is_waited_for() -> None:
    h = _ready()
    h.feed(submit("child", depends_on=["late"]))
    deliver(h)
    h.feed(submit("late", at=T0 + 10))
    assert h.state.get("o:late") is None  # it came: no deadline is kept
    h.claim("late", "n1", 1, at=T0 + 20)
    h.complete("late", "n1", 1, at=T0 + 30)
    deliver(h)
    assert h.unit("child").status == "scheduled"
    h.tick(T0 + h.scheduler.ctx.cfg.unknown_parent_ms + 1)
    deliver(h)
    assert failures(h) == {}


def test_a_cycle_across_partitions_is_found_and_every_step_in_it_fails() -> None:
    h = _ready()
    # a -> b -> c -> a (each waits on the next), submitted in an order that leaves the
    # cycle closed only by the last registration
    h.feed(submit("a", depends_on=["b"]))
    h.feed(submit("b", at=T0 + 1, depends_on=["c"]))
    h.feed(submit("c", at=T0 + 2, depends_on=["a"]))
    h.feed(submit("d", at=T0 + 3, depends_on=["a"]))  # waits on the cycle from outside
    deliver(h)
    found = failures(h)
    assert set(found) == {"a", "b", "c", "d"}
    # the cycle's steps fail as closing it (or as the dependents of one that did); the
    # step outside it, as a dependent
    assert "depends_on_cycle" in found.values()
    assert {found[u] for u in "abc"} <= {"depends_on_cycle", "parent_failed"}
    assert found["d"] == "parent_failed"
    cycle = next(f for f in h.outputs
                 if isinstance(f, WorkUnitFailed) and f.error_code == "depends_on_cycle")
    assert "closes a cycle" in cycle.error_reason
    assert all(f"{u} ->" in cycle.error_reason or f"-> {u}" in cycle.error_reason
               for u in ("a", "b", "c"))
    assert_replay_equals_live(h)


def test_a_long_chain_without_a_cycle_is_searched_but_never_failed() -> None:
    h = _ready()
    for i in range(1, 12):
        h.feed(submit(f"s{i}", at=T0 + i, depends_on=[f"s{i - 1}"]))
    h.feed(submit("s0", at=T0 + 20))
    deliver(h)
    assert failures(h) == {}
    probes = sum(isinstance(o, WorkUnitDependencyProbe) for o in h.outputs)
    assert 0 < probes <= 11 * 11  # each origin once per hop


def test_a_failed_step_of_a_session_that_fails_fast_cancels_the_rest() -> None:
    h = _ready()
    h.feed(submit("risky", failure_policy="fail_fast", max_attempts=1))
    h.feed(submit("other", at=T0 + 1))
    h.feed(submit("after", at=T0 + 2, depends_on=["other"]))
    deliver(h)
    h.claim("risky", "n1", 1, at=T0 + 10)
    h.claim("other", "n1", 1, at=T0 + 11)
    mark = len(h.outputs)
    h.fail("risky", "n1", 1, "boom", at=T0 + 20)
    deliver(h)
    cancelled = {f.work_unit_id for f in h.outputs if isinstance(f, WorkUnitCancelled)}
    assert cancelled == {"other", "after"}
    (cancel,) = [f for f in h.outputs[mark:] if isinstance(f, ControlRequested)
                 and f.broadcast]
    assert cancel.requested_by == "onceflow:fail_fast" and "risky failed" in cancel.reason


def test_a_failed_step_of_a_session_that_continues_fails_only_its_dependents() -> None:
    h = _ready()
    h.feed(submit("risky", max_attempts=1))
    h.feed(submit("child", at=T0 + 1, depends_on=["risky"]))
    h.feed(submit("other", at=T0 + 2))
    deliver(h)
    h.claim("risky", "n1", 1, at=T0 + 10)
    h.fail("risky", "n1", 1, "boom", at=T0 + 20)
    deliver(h)
    assert failures(h) == {"risky": "boom", "child": "parent_failed"}
    assert h.unit("other").status == "scheduled"
