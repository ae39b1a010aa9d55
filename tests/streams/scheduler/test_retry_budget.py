"""A retry budget per tenant: a token bucket, shared out over the scheduler partitions."""

from __future__ import annotations

from onceflow.schemas import WorkUnitFailed, WorkUnitRetryScheduled
from onceflow.streams.settings import OnceflowSettings, SchedulerSettings
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)

# 6 partitions: this partition's share is 12 / 6 = 2 retries, refilled 60 / 6 = 10 a minute
SETTINGS = OnceflowSettings(partitions=6, scheduler=SchedulerSettings(
    retry_budget=12, retry_budget_per_minute=60))


def _fail_once(h: Harness, wu: str, at: int, tenant: str = "acme") -> list:
    facts = h.feed(submit(wu, at=at).model_copy(update={"tenant_id": tenant}))
    sched = facts[-1]
    h.claim(wu, sched.selected_node_id, sched.attempt_index, at=at + 1)  # type: ignore[attr-defined]
    return h.fail(wu, sched.selected_node_id, sched.attempt_index,  # type: ignore[attr-defined]
                  "network_transient", at=at + 2)


def test_retries_beyond_the_tenants_budget_fail_with_the_reason() -> None:
    h = Harness(settings=SETTINGS)
    h.see(heartbeat("n1"))
    outcomes = [_fail_once(h, f"wu-{i}", T0 + i * 10) for i in range(3)]
    assert [isinstance(o[-1], WorkUnitRetryScheduled) for o in outcomes] == [True, True, False]
    dropped = outcomes[2][-1]
    assert isinstance(dropped, WorkUnitFailed) and dropped.final
    assert dropped.error_reason.startswith("retry_budget_exhausted")
    # another tenant has its own budget
    assert isinstance(_fail_once(h, "other-1", T0 + 50, tenant="globex")[-1],
                      WorkUnitRetryScheduled)


def test_the_budget_refills_over_logged_time() -> None:
    h = Harness(settings=SETTINGS)
    h.see(heartbeat("n1"))
    for i in range(2):
        _fail_once(h, f"wu-{i}", T0 + i * 10)
    assert isinstance(_fail_once(h, "wu-2", T0 + 30)[-1], WorkUnitFailed)
    # 6 s later one token (10 a minute) is back
    assert isinstance(_fail_once(h, "wu-3", T0 + 6_100)[-1], WorkUnitRetryScheduled)


def test_replay_of_a_spent_budget_equals_the_live_state() -> None:
    h = Harness(settings=SETTINGS)
    h.see(heartbeat("n1"))
    for i in range(4):
        _fail_once(h, f"wu-{i}", T0 + i * 1000)
    assert_replay_equals_live(h)
