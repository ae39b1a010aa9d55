"""Autoscaling: the capacity controller (scale requests, admission modes) and the local fleet.

Import from here; `autoscaler._impl` is private.
"""

from onceflow.autoscaler._impl.controller import (
    CapacityController,
    Metrics,
    Position,
    recheck,
    step,
)

__all__ = ["CapacityController", "Metrics", "Position", "recheck", "step"]
