"""A tenant's retry budget is one token bucket, whatever the partitions: Krako 2.0's 40
retries refilled 20 a minute, kept by its one writer (the limiter) for every scheduler
partition, deterministic in replay."""

from __future__ import annotations

from onceflow.schemas import (
    Event,
    RetryDenied,
    RetryGranted,
    RetryRequested,
    WorkUnitFailed,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import Limiter
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from onceflow.streams.topics import TopicCatalog
from onceflow.streams.types import Routed
from tests.streams.scheduler.fixtures import (
    T0,
    Harness,
    assert_replay_equals_live,
    heartbeat,
    submit,
)

SETTINGS = OnceflowSettings(partitions=6)  # Krako 2.0's budget: 40, refilled 20 a minute


class Cluster:
    """Six scheduler partitions, each its own reducer and state, and one limiter: a retry
    request goes from its partition to the limiter, the answer back to that partition."""

    def __init__(self, settings: OnceflowSettings = SETTINGS) -> None:
        self.reports = TopicCatalog(settings)["reports"]
        self.partitions = [Harness(settings=settings, answer_retries=False)
                           for _ in range(self.reports.partitions)]
        for h in self.partitions:
            h.see(heartbeat("n1", available=10_000))
        self.limiter = Limiter.from_settings(settings)
        self.limiter_state = MemoryState()
        self.limiter_facts: list[Event] = []
        self.requests: list[RetryRequested] = []

    def of(self, wu: str) -> Harness:
        return self.partitions[self.reports.partition_of(wu)]

    def fail_running(self, wu: str, at: int, tenant: str = "acme") -> None:
        """Submit, claim and fail `wu` (retryably) at `at`; its retry request is held."""
        h = self.of(wu)
        facts = h.feed(submit(wu, at=at).model_copy(update={"tenant_id": tenant}))
        sched = next(f for f in facts if isinstance(f, WorkUnitScheduled))
        h.claim(wu, sched.selected_node_id, 1, at=at)
        out = h.fail(wu, sched.selected_node_id, 1, "network_transient", at=at)
        self.requests += [f for f in out if isinstance(f, RetryRequested)]

    def deliver(self) -> list[Event]:
        """The held requests reach the limiter in order; its answers reach the partitions.
        Returns the partitions' decisions."""
        decided: list[Event] = []
        for request in self.requests:
            _, out = self.limiter.apply(self.limiter_state, request)
            self.limiter_facts += [o for o in out if not isinstance(o, Routed)]
            for r in out:
                if isinstance(r, Routed):
                    assert r.partition == self.reports.partition_of(request.work_unit_id or "")
                    decided += self.of(request.work_unit_id or "").feed(r.event)
        self.requests = []
        return decided


def _outcomes(decided: list[Event]) -> tuple[int, list[WorkUnitFailed]]:
    retries = sum(isinstance(f, WorkUnitRetryScheduled) for f in decided)
    exhausted = [f for f in decided if isinstance(f, WorkUnitFailed) and f.final]
    return retries, exhausted


def test_41_failures_at_once_over_six_partitions_get_exactly_40_retries() -> None:
    c = Cluster()
    units = [f"wu-{i}" for i in range(41)]
    for wu in units:
        c.fail_running(wu, T0)
    assert len({c.reports.partition_of(u) for u in units}) == 6  # spread over every partition
    retries, exhausted = _outcomes(c.deliver())
    assert retries == 40
    assert len(exhausted) == 1
    assert exhausted[0].error_reason.startswith("retry_budget_exhausted")
    assert c.of(exhausted[0].work_unit_id or "").unit(
        exhausted[0].work_unit_id or "").status == "failed"


def test_twenty_retries_come_back_in_a_minute_of_logged_time() -> None:
    c = Cluster()
    for i in range(40):
        c.fail_running(f"wu-{i}", T0)
    assert _outcomes(c.deliver())[0] == 40
    for i in range(21):
        c.fail_running(f"later-{i}", T0 + 60_000)
    retries, exhausted = _outcomes(c.deliver())
    assert (retries, len(exhausted)) == (20, 1)


def test_another_tenant_has_its_own_budget() -> None:
    c = Cluster()
    for i in range(41):
        c.fail_running(f"wu-{i}", T0)
    c.fail_running("other-1", T0, tenant="globex")
    retries, exhausted = _outcomes(c.deliver())
    assert retries == 41 and [f.tenant_id for f in exhausted] == ["acme"]


def test_a_lease_that_ran_out_spends_no_budget() -> None:
    h = Harness(settings=SETTINGS)
    h.see(heartbeat("n1"))
    sched = next(f for f in h.feed(submit("wu-1")) if isinstance(f, WorkUnitScheduled))
    grant = h.claim("wu-1", sched.selected_node_id, 1, at=T0 + 1)[0]
    facts = h.tick(grant.lease_expires_at)  # type: ignore[attr-defined]
    assert not [f for f in facts if isinstance(f, RetryRequested)]
    assert isinstance(facts[-1], WorkUnitRetryScheduled)


def test_a_cancel_while_the_limiter_decides_wins() -> None:
    from onceflow.schemas import ControlRequested

    c = Cluster()
    c.fail_running("wu-1", T0)
    h = c.of("wu-1")
    assert h.unit("wu-1").status == "retry_pending"
    h.feed(ControlRequested(event_id="cancel-1", occurred_at=T0 + 1, tenant_id="acme",
                            work_unit_id="wu-1", action="cancel", scope="unit",
                            requested_by="alice"))
    assert c.deliver() == []  # the grant finds the unit cancelled: nothing more
    assert h.unit("wu-1").status == "cancelled"


def test_replay_of_the_budget_equals_live_for_the_limiter_and_every_partition() -> None:
    c = Cluster()
    for i in range(45):
        c.fail_running(f"wu-{i}", T0 + i * 10)
    c.deliver()
    assert {RetryGranted, RetryDenied} <= {type(f) for f in c.limiter_facts}
    replayed = MemoryState()
    fresh = Limiter.from_settings(SETTINGS)
    for fact in c.limiter_facts:
        fresh.evolve(replayed, fact)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(
        c.limiter_state.raw_items())
    for h in c.partitions:
        assert_replay_equals_live(h)
