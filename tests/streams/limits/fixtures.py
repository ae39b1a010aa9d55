"""Builders for limiter tests: the pure reducer over in-memory state, events by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from onceflow.schemas import Event, SlotGranted, SlotQueued, SlotReleased, SlotRequested
from onceflow.streams.limits import ConcurrencyLimits, Limiter, LimitsSettings
from onceflow.streams.settings import OnceflowSettings
from onceflow.streams.state import MemoryState
from onceflow.streams.topics import TopicCatalog
from onceflow.streams.types import Routed

T0 = 1_700_000_000_000


def request(wu: str, scopes: list[str], at: int = T0, attempt: int = 1) -> SlotRequested:
    return SlotRequested(event_id=f"req-{wu}-{attempt}-{at}", occurred_at=at, work_unit_id=wu,
                         tenant_id="acme", attempt_index=attempt, scopes=scopes)


def release(wu: str, at: int = T0, reason: str = "completed") -> SlotReleased:
    return SlotReleased(event_id=f"rel-{wu}-{at}", occurred_at=at, work_unit_id=wu,
                        tenant_id="acme", reason=reason)  # type: ignore[arg-type]


@dataclass
class LimiterHarness:
    scopes: dict[str, int] = field(default_factory=dict)
    state: MemoryState = field(default_factory=MemoryState)
    outputs: list[Event | Routed] = field(default_factory=list)

    def __post_init__(self) -> None:
        settings = OnceflowSettings(limits=LimitsSettings(scopes=self.scopes))
        self.limiter = Limiter(ConcurrencyLimits.from_settings(settings.limits),
                               TopicCatalog(settings)["reports"])

    def feed(self, *events: Event) -> list[Event]:
        facts: list[Event] = []
        for e in events:
            _, out = self.limiter.apply(self.state, e)
            self.outputs.extend(out)
            facts += [o for o in out if not isinstance(o, Routed)]
        return facts

    def granted(self, facts: list[Event]) -> list[str]:
        return [f.work_unit_id or "" for f in facts if isinstance(f, SlotGranted)]

    def queued(self, facts: list[Event]) -> list[SlotQueued]:
        return [f for f in facts if isinstance(f, SlotQueued)]
