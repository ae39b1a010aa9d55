"""Sessions folded from the scheduler's real facts: lifecycle, steps, cost, and `at`."""

from __future__ import annotations

from decimal import Decimal

from onceflow.infra.sessions import fold_sessions
from onceflow.schemas import LedgerLineItem
from onceflow.streams.types import Routed
from tests.streams.scheduler.fixtures import T0, Harness, heartbeat, submit
from tests.streams.scheduler.test_control import apply, control


def _facts(h: Harness) -> list:  # type: ignore[type-arg]
    return [o for o in h.outputs if not isinstance(o, Routed)]


def _ready() -> Harness:
    h = Harness()
    h.see(heartbeat("n1"))
    return h


def test_a_session_runs_then_completes_and_costs_what_its_steps_were_billed() -> None:
    h = _ready()
    h.feed(submit("a"))
    h.feed(submit("b", at=T0 + 1, depends_on=["a"]))
    h.claim("a", "n1", 1, at=T0 + 2)
    view = fold_sessions(_facts(h))[("acme", "s1")]
    assert view.state == "running"
    assert (view.steps["a"].state, view.steps["b"].state) == ("running", "waiting")
    assert view.steps["b"].depends_on == ["a"]
    h.complete("a", "n1", 1, at=T0 + 10)
    h.feed(submit("c", at=T0 + 11))
    h.claim("c", "n1", 1, at=T0 + 12)
    h.complete("c", "n1", 1, at=T0 + 20)
    item = LedgerLineItem(event_id="li", occurred_at=T0 + 21, tenant_id="acme",
                          execution_session_id="s1", work_unit_id="a", line_item_id="li",
                          source_event_id="x", source_event_type="workunit.completed",
                          line_item_type="workunit_cpu", total_usd=Decimal("0.25"),
                          pricing_version="v1")
    view = fold_sessions(_facts(h), [item])[("acme", "s1")]
    assert view.steps["a"].state == "completed" and view.steps["a"].attempts == 1
    assert view.steps["a"].as_json()["time_ms"] == 10
    assert view.cost_usd == Decimal("0.25")
    # as it was before a completed
    assert fold_sessions(_facts(h), at=T0 + 5)[("acme", "s1")].steps["a"].state == "running"


def test_paused_waiting_cancelling_and_cancelled_sessions() -> None:
    h = _ready()
    h.feed(submit("a"))
    h.claim("a", "n1", 1, at=T0 + 1)
    h.feed(submit("b", at=T0 + 2))
    apply(h, control("pause", "session", at=T0 + 3, tenant_id="acme",
                     execution_session_id="s1"))
    assert fold_sessions(_facts(h))[("acme", "s1")].state == "paused"
    apply(h, control("resume", "session", at=T0 + 4, tenant_id="acme",
                     execution_session_id="s1"))
    h.feed(submit("c", at=T0 + 5, requires_approval=True))
    assert fold_sessions(_facts(h))[("acme", "s1")].state == "waiting"
    apply(h, control("cancel", "session", at=T0 + 6, tenant_id="acme",
                     execution_session_id="s1"))
    view = fold_sessions(_facts(h))[("acme", "s1")]
    assert view.state == "cancelled" and view.cancelled_by == "alice"
    assert {s.state for s in view.steps.values()} == {"cancelled"}
