"""Controls stay inside their tenant: the scheduler applies a control, a resolution, an
approval or an answer only to the acting tenant's units, and answers another tenant's as
if it did not exist, in the reducer, whatever wrote the event."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.schemas import (
    PLATFORM_TENANT,
    ContentRef,
    ControlApplied,
    ControlHumanInputSubmitted,
    ControlOperatorResolved,
    ControlRequested,
    ControlSessionCancelRequested,
    Event,
    WorkUnitCancelled,
    WorkUnitScheduled,
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


def _control(action: str, scope: str, tenant: str, at: int, **target: Any) -> ControlRequested:
    return ControlRequested(event_id=f"ctl-{tenant}-{action}-{scope}-{at}", occurred_at=at,
                            tenant_id=tenant, action=action, scope=scope,  # type: ignore[arg-type]
                            requested_by=f"{tenant}-op", reason="why not", **target)


def _apply(h: Harness, command: ControlRequested) -> list[Event]:
    """A command as it travels: a wider one comes back as this partition's copy."""
    facts = h.feed(command)
    if command.scope == "unit":
        return facts
    copy = next(o.event for o in h.outputs if isinstance(o, Routed)
                and isinstance(o.event, ControlRequested)
                and o.event.causation_id == command.event_id)
    return h.feed(copy)


def _record(facts: list[Event]) -> ControlApplied:
    (record,) = [f for f in facts if isinstance(f, ControlApplied)]
    return record


def _running(h: Harness, wu: str) -> None:
    scheduled = [f for f in h.feed(submit(wu)) if isinstance(f, WorkUnitScheduled)]
    h.claim(wu, scheduled[0].selected_node_id, scheduled[0].attempt_index, at=T0 + 5)
    assert h.unit(wu).status == "granted"


@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
def test_another_tenants_unit_control_is_answered_as_if_the_unit_did_not_exist(
        action: str) -> None:
    h = _ready()
    _running(h, "acme-unit")  # `submit` makes it tenant acme's
    before = h.unit("acme-unit")
    theirs = _record(_apply(h, _control(action, "unit", "mallory", T0 + 10,
                                        work_unit_id="acme-unit")))
    nothing = _record(_apply(h, _control(action, "unit", "mallory", T0 + 11,
                                         work_unit_id="no-such-unit")))
    assert theirs.outcome == nothing.outcome == "not_found"
    # the same words as for a unit that does not exist: nothing tells mallory it does
    assert theirs.detail.replace("acme-unit", "X") == nothing.detail.replace("no-such-unit", "X")
    assert h.unit("acme-unit") == before
    assert not [o for o in h.outputs if isinstance(o, WorkUnitCancelled)]
    assert not [k for k, _ in h.state.items("ctl:")]  # no pause was recorded
    # acme's own operator, and the platform's, do reach it
    mine = _record(_apply(h, _control("cancel", "unit", "acme", T0 + 12,
                                      work_unit_id="acme-unit")))
    assert mine.outcome == "applied" and h.unit("acme-unit").status == "cancelled"
    assert_replay_equals_live(h)


def test_the_platforms_operator_acts_on_any_tenants_unit() -> None:
    h = _ready()
    _running(h, "acme-unit")
    record = _record(_apply(h, _control("cancel", "unit", PLATFORM_TENANT, T0 + 10,
                                        work_unit_id="acme-unit")))
    assert record.outcome == "applied" and h.unit("acme-unit").status == "cancelled"


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_another_tenant_cannot_approve_or_deny(action: str) -> None:
    h = _ready()
    h.feed(submit("gated", requires_approval=True))
    record = _record(_apply(h, _control(action, "unit", "mallory", T0 + 10,
                                        work_unit_id="gated")))
    assert record.outcome == "not_found"
    unit = h.unit("gated")
    assert (unit.status, unit.reason, unit.approved) == ("waiting", "awaiting_approval", False)


def test_another_tenant_cannot_resolve_a_parked_unit() -> None:
    h = _ready()
    scheduled = [f for f in h.feed(submit("charge", kind="tool", effect="WORLD_MUTATING"))
                 if isinstance(f, WorkUnitScheduled)]
    node = scheduled[0].selected_node_id
    deadline = h.claim("charge", node, 1, at=T0 + 5)[0].lease_expires_at  # type: ignore[attr-defined]
    h.stage("charge", node, 1, at=T0 + 6)
    h.tick(deadline)
    assert h.unit("charge").status == "needs_operator"
    for resolution in ("retry", "mark_done", "abandon"):
        record = _record(h.feed(ControlOperatorResolved(
            event_id=f"res-{resolution}", occurred_at=deadline + 1, tenant_id="mallory",
            work_unit_id="charge", resolution=resolution, operator="mallory")))  # type: ignore[arg-type]
        assert (record.outcome, record.detail) == ("not_found", "unknown work unit charge")
        assert h.unit("charge").status == "needs_operator"
    mine = _record(h.feed(ControlOperatorResolved(
        event_id="res-acme", occurred_at=deadline + 2, tenant_id="acme",
        work_unit_id="charge", resolution="abandon", operator="acme-op")))
    assert mine.outcome == "applied" and h.unit("charge").status == "failed"


def test_another_tenant_cannot_answer_an_input_step() -> None:
    h = _ready()
    h.feed(submit("ask", kind="input", prompt="Which region?"))
    answer = ControlHumanInputSubmitted(
        event_id="ans-m", occurred_at=T0 + 5, tenant_id="mallory", execution_session_id="s1",
        work_unit_id="ask", prompt_id="ask", input_ref=ContentRef(sha256="a" * 64, size=2),
        submitted_by="mallory")
    record = _record(h.feed(answer))
    assert record.outcome == "not_found"
    assert (h.unit("ask").status, h.unit("ask").reason) == ("waiting", "awaiting_input")


def test_another_tenants_release_1_cancel_changes_nothing() -> None:
    h = _ready()
    _running(h, "acme-unit")
    facts = h.feed(ControlSessionCancelRequested(
        event_id="old-cancel", occurred_at=T0 + 10, tenant_id="mallory",
        work_unit_id="acme-unit", requested_by="mallory"))
    assert facts == [] and h.unit("acme-unit").status == "granted"


def test_a_session_or_tenant_scope_names_its_own_tenants_work_only() -> None:
    h = _ready()
    _running(h, "acme-unit")  # tenant acme, session s1
    for scope, target in (("session", {"execution_session_id": "s1"}), ("tenant", {})):
        record = _record(_apply(h, _control("cancel", scope, "mallory", T0 + 10, **target)))
        assert record.outcome == "none_here", record
    assert h.unit("acme-unit").status == "granted"


def test_only_the_platforms_operator_steers_the_whole_queue() -> None:
    h = _ready()
    _running(h, "acme-unit")
    record = _record(_apply(h, _control("pause", "queue", "mallory", T0 + 10)))
    assert record.outcome == "refused" and "only the platform's operator" in record.detail
    assert not [k for k, _ in h.state.items("ctl:")]
    record = _record(_apply(h, _control("cancel", "queue", "mallory", T0 + 11)))
    assert record.outcome == "refused" and h.unit("acme-unit").status == "granted"
    record = _record(_apply(h, _control("pause", "queue", PLATFORM_TENANT, T0 + 12)))
    assert record.outcome == "applied" and [k for k, _ in h.state.items("ctl:")] == ["ctl:queue"]
