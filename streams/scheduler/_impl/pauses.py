"""Which operator pause holds a unit: read by placement, claims and ticks, kept by `control`."""

from __future__ import annotations

from onceflow.streams.scheduler._impl.unit import UnitRecord
from onceflow.streams.types import State

__all__ = ["PAUSES", "VERSION", "control_version", "paused_by"]

#: how many pauses are active in the partition (none: placement reads nothing more)
PAUSES = "ctl-pauses"
#: grows with every pause and resume: ticks look at paused units again only when it moved
VERSION = "ctl-version"


def paused_by(state: State, unit: UnitRecord) -> str | None:
    """The pause that holds a unit (its narrowest), or None; one read when nothing is paused."""
    if not state.get(PAUSES):
        return None
    for target in (f"unit:{unit.work_unit_id}", f"session:{unit.tenant_id}/{unit.session_id}",
                   f"tenant:{unit.tenant_id}", "queue"):
        if state.get(f"ctl:{target}") is not None:
            return target
    return None


def control_version(state: State) -> int:
    version: int = state.get(VERSION, 0)
    return version
