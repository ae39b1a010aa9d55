"""Provider backoff: a 429 pauses the unit's LLM scope everywhere and costs it no attempt."""

from __future__ import annotations

from onceflow.schemas import (
    ClaimGranted,
    ProviderScopePaused,
    WorkUnitAttemptFailed,
    WorkUnitDeferred,
    WorkUnitFailureReported,
    WorkUnitRetryScheduled,
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


def _granted(h: Harness, wu: str, at: int = T0, **fields: object) -> tuple[str, int]:
    facts = h.feed(submit(wu, at=at, kind="llm_pod", prompt="hi", model="gpt-x", **fields))
    sched = facts[-1]
    assert isinstance(sched, WorkUnitScheduled), facts
    grant = h.claim(wu, sched.selected_node_id, sched.attempt_index, at=at + 5)[0]
    assert isinstance(grant, ClaimGranted)
    return sched.selected_node_id, sched.attempt_index


def _backoff(h: Harness, wu: str, node: str, attempt: int, at: int, until: int) -> list:
    return h.feed(WorkUnitFailureReported(
        event_id=f"429-{wu}-{attempt}", occurred_at=at, work_unit_id=wu, node_id=node,
        attempt_index=attempt, error_code="provider_backoff", incarnation="i1",
        retry_at=until, provider="openai", model="gpt-x"))


def test_a_429_retries_at_the_named_time_without_counting_an_attempt() -> None:
    h = Harness()
    h.see(heartbeat("n1"))
    node, attempt = _granted(h, "wu-1", max_attempts=1)
    facts = _backoff(h, "wu-1", node, attempt, T0 + 10, T0 + 2000)
    assert [type(f) for f in facts] == [WorkUnitAttemptFailed, ProviderScopePaused,
                                       WorkUnitRetryScheduled]
    retry = facts[-1]
    assert isinstance(retry, WorkUnitRetryScheduled)
    assert retry.retry_at == T0 + 2000 and retry.reason_code == "provider_backoff"
    assert h.unit("wu-1").failures == 0  # one attempt allowed, and it is not used up
    assert h.tick(T0 + 1999) == []
    placed = h.tick(T0 + 2000)
    assert isinstance(placed[-1], WorkUnitScheduled) and placed[-1].attempt_index == 2


def test_the_pause_reaches_every_partition_and_holds_that_scope_only() -> None:
    h = Harness()
    h.see(heartbeat("n1"))
    node, attempt = _granted(h, "wu-1")
    facts = _backoff(h, "wu-1", node, attempt, T0 + 10, T0 + 2000)
    pause = next(f for f in facts if isinstance(f, ProviderScopePaused))
    assert pause.scope == "model:gpt-x" and pause.paused_until == T0 + 2000
    copies = [o for o in h.outputs if isinstance(o, Routed)
              and isinstance(o.event, ProviderScopePaused)]
    partitions = h.scheduler.ctx.reports.partitions
    assert sorted(o.partition for o in copies) == list(range(partitions))  # type: ignore[type-var]
    assert len({o.event.event_id for o in copies}) == partitions
    # another partition records the copy once and defers the scope's units until the end
    other = Harness()
    other.see(heartbeat("n1"))
    recorded = other.feed(copies[0].event)
    assert len(recorded) == 1 and not recorded[0].broadcast  # type: ignore[attr-defined]
    assert other.feed(copies[0].event) == []  # the same pause again changes nothing
    held = other.feed(submit("wu-2", at=T0 + 20, kind="llm_pod", prompt="x", model="gpt-x"))[-1]
    assert isinstance(held, WorkUnitDeferred) and held.reason_code == "provider_paused"
    assert held.retry_at == T0 + 2000
    free = other.feed(submit("wu-3", at=T0 + 20, kind="llm_pod", prompt="x", model="other"))
    assert isinstance(free[-1], WorkUnitScheduled)  # another model is not paused
    assert isinstance(other.feed(submit("wu-4", at=T0 + 20))[-1], WorkUnitScheduled)  # cpu
    assert other.tick(T0 + 1999) == []
    assert isinstance(other.tick(T0 + 2000)[-1], WorkUnitScheduled)


def test_a_paused_unit_is_held_back_not_queued_for_more_nodes() -> None:
    h = Harness()
    h.see(heartbeat("n1"))
    node, attempt = _granted(h, "wu-1")
    _backoff(h, "wu-1", node, attempt, T0 + 10, T0 + 60_000)
    h.feed(submit("wu-2", at=T0 + 20, kind="llm_pod", prompt="x", model="gpt-x"))
    h.tick(T0 + 1000)
    sample = h.samples[-1]
    assert sample.throttled == 1 and sample.deferred == 0


def test_replay_of_a_backoff_equals_the_live_state() -> None:
    h = Harness()
    h.see(heartbeat("n1"))
    node, attempt = _granted(h, "wu-1")
    _backoff(h, "wu-1", node, attempt, T0 + 10, T0 + 2000)
    h.feed(submit("wu-2", at=T0 + 20, kind="llm_pod", prompt="x", model="gpt-x"))
    h.tick(T0 + 2000)
    assert_replay_equals_live(h)


def test_a_unit_whose_pause_ends_with_no_node_to_take_it_waits_for_one_and_runs() -> None:
    """Found by the simulation (seed 6988): a clock jump found the paused unit due while no
    node was fresh; it was left in the time index, behind the scan's floor, for ever."""
    other = Harness()
    other.see(heartbeat("n1"))
    pause = ProviderScopePaused(event_id="pause-1", occurred_at=T0 + 10, scope="model:gpt-x",
                                paused_until=T0 + 2000, provider="openai", model="gpt-x")
    other.feed(pause)
    held = other.feed(submit("wu-2", at=T0 + 20, kind="llm_pod", prompt="x", model="gpt-x"))
    assert isinstance(held[-1], WorkUnitDeferred) and held[-1].reason_code == "provider_paused"
    other.see(heartbeat("n1", at=T0 + 30, health="down"))  # no node when the pause ends
    (waits,) = other.tick(T0 + 400_000)
    assert isinstance(waits, WorkUnitDeferred) and waits.reason_code == "no_eligible_node"
    other.see(heartbeat("n1", at=T0 + 400_100))
    placed = other.tick(T0 + 400_200)
    assert isinstance(placed[-1], WorkUnitScheduled) and placed[-1].work_unit_id == "wu-2"
    assert_replay_equals_live(other)
