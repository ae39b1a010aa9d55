"""One effect rule for every kind: a WORLD_MUTATING cpu, llm or tool unit that staged its
effect and then went silent is parked, never rerun blindly; kinds that cannot keep the
rule are refused at admission with a reason that says what to use instead."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.schemas import (
    ClaimGranted,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
    effect_refusal,
)
from onceflow.streams.ids import idempotency_key_for
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)

#: the fields that make a unit of each kind runnable
KINDS: dict[str, dict[str, Any]] = {
    "cpu": {"kind": "cpu", "handler": "effects.append"},
    "llm_pod": {"kind": "llm_pod", "prompt": "charge the card", "model": "stub"},
    "tool": {"kind": "tool", "handler": "effects.append"},
}


def _granted(h: Harness, wu: str, **fields: Any) -> tuple[str, int, int]:
    scheduled = [f for f in h.feed(submit(wu, **fields)) if isinstance(f, WorkUnitScheduled)]
    assert scheduled, f"{wu} was not placed"
    node, attempt = scheduled[-1].selected_node_id, scheduled[-1].attempt_index
    granted = h.claim(wu, node, attempt, at=T0 + 10)
    assert isinstance(granted[0], ClaimGranted)
    return node, attempt, granted[0].lease_expires_at


def _ready() -> Harness:
    h = Harness()
    h.see(heartbeat("n1"))
    return h


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_staged_world_mutating_unit_whose_lease_ends_is_parked_never_rerun(kind: str) -> None:
    h = _ready()
    node, attempt, deadline = _granted(h, "charge", effect="WORLD_MUTATING", **KINDS[kind])
    h.stage("charge", node, attempt, at=T0 + 20)
    facts = h.tick(deadline)
    parked = [f for f in facts if isinstance(f, WorkUnitNeedsOperator)]
    assert parked and parked[0].reason_code == "unsafe_to_retry", facts
    assert not [f for f in facts if isinstance(f, WorkUnitRetryScheduled)]
    assert h.unit("charge").status == "needs_operator"
    # long after, nothing places it again: only an operator's resolution may
    later = h.tick(deadline + 3_600_000)
    assert not [f for f in later if isinstance(f, WorkUnitScheduled | WorkUnitRetryScheduled)]
    assert h.unit("charge").attempt == attempt
    assert_replay_equals_live(h)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_world_mutating_unit_that_never_staged_is_placed_again(kind: str) -> None:
    h = _ready()
    _, _, deadline = _granted(h, "charge", effect="WORLD_MUTATING", **KINDS[kind])
    assert isinstance(h.tick(deadline)[-1], WorkUnitRetryScheduled)


@pytest.mark.parametrize("kind", ["cpu", "tool"])
def test_a_token_class_makes_a_staged_retry_safe_for_cpu_and_tools(kind: str) -> None:
    h = _ready()
    node, attempt, deadline = _granted(h, "charge", effect="WORLD_MUTATING",
                                       idempotency_class="token", **KINDS[kind])
    h.stage("charge", node, attempt, at=T0 + 20)
    facts = h.tick(deadline)
    assert isinstance(facts[-1], WorkUnitRetryScheduled)
    assert not [f for f in facts if isinstance(f, WorkUnitNeedsOperator)]
    # the retry carries the same idempotency key, which is what makes it safe
    retry = facts[-1]
    placed = h.tick(retry.retry_at)
    scheduled = [f for f in placed if isinstance(f, WorkUnitScheduled)]
    assert scheduled and scheduled[0].idempotency_key == idempotency_key_for("charge")


@pytest.mark.parametrize(("fields", "says"), [
    ({"kind": "input", "prompt": "ok?"}, "label it PURE"),
    ({**KINDS["cpu"], "idempotency_class": "readback"}, "register it as a tool"),
    ({**KINDS["llm_pod"], "idempotency_class": "readback"}, "register it as a tool"),
    ({**KINDS["llm_pod"], "idempotency_class": "token"}, "the LLM providers send none"),
])
def test_a_kind_that_cannot_keep_the_rule_is_refused_at_admission(
        fields: dict[str, Any], says: str) -> None:
    h = _ready()
    facts = h.feed(submit("charge", effect="WORLD_MUTATING", **fields))
    rejected = [f for f in facts if isinstance(f, WorkUnitRejected)]
    assert rejected and rejected[0].reason_code == "effect_unsupported", facts
    assert says in rejected[0].reason
    assert not [f for f in facts if isinstance(f, WorkUnitScheduled)]
    assert h.unit("charge").status == "rejected"


@pytest.mark.parametrize("kind", ["cpu", "llm_pod", "tool", "input"])
@pytest.mark.parametrize("effect", ["PURE", "READ_ONLY_NONDET"])
def test_units_that_change_nothing_are_never_refused_for_their_effect(kind: str,
                                                                      effect: str) -> None:
    for idem in ("none", "token", "readback"):
        assert effect_refusal(kind, effect, idem) is None  # type: ignore[arg-type]


def test_the_client_and_cli_refuse_it_before_sending_with_the_same_reason() -> None:
    from onceflow.infra.cli.submit import SubmitInputError, build_unit

    with pytest.raises(SubmitInputError, match="register it as a tool"):
        build_unit({"work_unit_id": "charge", "kind": "cpu", "effect": "WORLD_MUTATING",
                    "idempotency_class": "readback"})
    assert build_unit({"work_unit_id": "charge", "kind": "cpu",
                       "effect": "WORLD_MUTATING"}).effect == "WORLD_MUTATING"
