"""Which operator pause holds a unit: read by placement, claims and ticks, kept by `control`."""

from __future__ import annotations

from onceflow.schemas import Scope
from onceflow.streams.scheduler._impl.unit import UnitRecord
from onceflow.streams.types import State

__all__ = ["PAUSES", "QUEUE_TARGET", "VERSION", "control_version", "paused_by", "unit_target"]

#: what a control of the whole queue acts on (a tenant's or a session's: their `Scope`)
QUEUE_TARGET = "queue"


def unit_target(work_unit_id: str) -> str:
    """What a control of one unit acts on."""
    return f"unit:{work_unit_id}"

#: how many pauses are active in the partition (none: placement reads nothing more)
PAUSES = "ctl-pauses"
#: grows with every pause and resume: ticks look at paused units again only when it moved
VERSION = "ctl-version"


def paused_by(state: State, unit: UnitRecord) -> str | None:
    """The pause that holds a unit (its narrowest), or None; one read when nothing is paused."""
    if not state.get(PAUSES):
        return None
    for target in (unit_target(unit.work_unit_id),
                   str(Scope.of_session(unit.tenant_id, unit.session_id)),
                   str(Scope.of_tenant(unit.tenant_id)), QUEUE_TARGET):
        if state.get(f"ctl:{target}") is not None:
            return target
    return None


def control_version(state: State) -> int:
    version: int = state.get(VERSION, 0)
    return version
