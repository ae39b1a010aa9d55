"""Builders for scheduler tests: a harness around the pure reducer, events by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onceflow.billing import cost_estimator
from onceflow.schemas import (
    ClaimRequested,
    ClockTick,
    EffectStaged,
    Event,
    NodeHeartbeat,
    QueueSampled,
    RetryRequested,
    WorkUnitFailureReported,
    WorkUnitResultReported,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import Limiter
from onceflow.streams.scheduler import Scheduler, UnitRecord
from onceflow.streams.state import MemoryState
from onceflow.streams.types import Routed

T0 = 1_700_000_000_000


def heartbeat(node: str, *, at: int = T0, kinds: tuple[str, ...] = ("cpu", "llm_pod", "tool"),
              available: int = 8, queue: int = 0, utilization: float = 0.0,
              region: str | None = "eu-west", version: str = "1.0.0",
              health: str = "healthy", enabled: bool = True) -> NodeHeartbeat:
    return NodeHeartbeat(
        event_id=f"hb-{node}-{at}", occurred_at=at, node_id=node, supported_kinds=list(kinds),
        available_concurrency=available, active_queue_depth=queue, utilization=utilization,
        region=region, version=version, health_status=health,  # type: ignore[arg-type]
        enabled=enabled, max_concurrency=available,
    )


def submit(wu: str, *, at: int = T0, **fields: Any) -> WorkUnitSubmitted:
    return WorkUnitSubmitted(event_id=f"sub-{wu}-{at}", occurred_at=at, tenant_id="acme",
                             execution_session_id="s1", work_unit_id=wu, **fields)


@dataclass
class Harness:
    """The scheduler reducer over in-memory state, recording every output.

    The limiter answers a retry request at once, as the live one does a moment later
    (`answer_retries`): the answer's facts follow the request's in what `feed` returns.
    """

    settings: OnceflowSettings = field(default_factory=OnceflowSettings)
    state: MemoryState = field(default_factory=MemoryState)
    outputs: list[Event | Routed] = field(default_factory=list)
    samples: list[QueueSampled] = field(default_factory=list)
    answer_retries: bool = True

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.settings,
                                   estimator=cost_estimator(self.settings.billing))
        self.limiter = Limiter.from_settings(self.settings)
        self.limiter_state = MemoryState()

    def see(self, *events: Event) -> None:
        for e in events:
            self.scheduler.observe(e)

    def feed(self, event: Event) -> list[Event]:
        _, out = self.scheduler.apply(self.state, event)
        self.outputs.extend(out)
        facts = [o for o in out if not isinstance(o, Routed)]
        if self.answer_retries:
            for o in out:
                if isinstance(o, Routed) and isinstance(o.event, RetryRequested):
                    facts.extend(self.ask_limiter(o.event))
        return facts

    def ask_limiter(self, request: Event) -> list[Event]:
        """The limiter's answer to a request, fed back to the scheduler: its facts."""
        _, answers = self.limiter.apply(self.limiter_state, request)
        facts: list[Event] = []
        for a in answers:
            if isinstance(a, Routed):
                facts.extend(self.feed(a.event))
        return facts

    def unit(self, wu: str) -> UnitRecord:
        value = UnitRecord.load(self.state, wu)
        assert value is not None, f"no unit {wu}"
        return value

    def claim(self, wu: str, node: str, attempt: int, *, at: int, inc: str = "i1") -> list[Event]:
        return self.feed(ClaimRequested(
            event_id=f"claim-{wu}-{node}-{attempt}-{inc}-{at}", occurred_at=at, work_unit_id=wu,
            node_id=node, attempt_index=attempt, incarnation=inc,
        ))

    def complete(self, wu: str, node: str, attempt: int, *, at: int,
                 inc: str = "i1") -> list[Event]:
        return self.feed(WorkUnitResultReported(
            event_id=f"done-{wu}-{node}-{attempt}-{inc}-{at}", occurred_at=at, work_unit_id=wu,
            node_id=node, attempt_index=attempt, incarnation=inc,
        ))

    def fail(self, wu: str, node: str, attempt: int, code: str, *, at: int,
             inc: str = "i1") -> list[Event]:
        return self.feed(WorkUnitFailureReported(
            event_id=f"fail-{wu}-{attempt}-{at}", occurred_at=at, work_unit_id=wu,
            node_id=node, attempt_index=attempt, error_code=code, incarnation=inc,
        ))

    def stage(self, wu: str, node: str, attempt: int, *, at: int) -> list[Event]:
        return self.feed(EffectStaged(
            event_id=f"stage-{wu}-{attempt}-{at}", occurred_at=at, work_unit_id=wu,
            node_id=node, attempt_index=attempt,
        ))

    def tick(self, at: int, partition: int = 0) -> list[Event]:
        """What a tick decided about units (its queue sample, if any, is in `samples`)."""
        out = self.feed(ClockTick(event_id=f"tick-{partition}-{at}", occurred_at=at,
                                  partition=partition))
        self.samples.extend(f for f in out if isinstance(f, QueueSampled))
        return [f for f in out if not isinstance(f, QueueSampled)]


def assert_replay_equals_live(h: Harness) -> None:
    """Folding the harness's facts into fresh state gives its live state, byte for byte."""
    from onceflow.streams.runtime import fingerprint_items

    replayed = MemoryState()
    fresh = Scheduler(h.settings, estimator=cost_estimator(h.settings.billing))
    for fact in (o for o in h.outputs if not isinstance(o, Routed)):
        fresh.evolve(replayed, fact)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(h.state.raw_items())
