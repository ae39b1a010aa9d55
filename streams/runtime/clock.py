"""The clock: time entering the log as tick events, one per partition per interval.

Reducers never read the wall clock; a lease or a retry falls due when a
tick at or after its time is folded. The batched shell of the member that
owns a partition produces its ticks (`batched.Clock`) into the topic the
reducer reads its reports from, so that a tick is ordered after everything
reported before it was made, and time advances once per partition however
many members a role runs.
"""

from __future__ import annotations

from onceflow.schemas import ClockTick
from onceflow.streams.ids import derive_event_id

__all__ = ["tick_event"]


def tick_event(topic: str, partition: int, at_ms: int, sequence: int) -> ClockTick:
    return ClockTick(
        event_id=derive_event_id(f"{topic}:{partition}:{at_ms}", "tick"),
        occurred_at=at_ms, partition=partition, sequence=sequence,
    )
