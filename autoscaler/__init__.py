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
from onceflow.autoscaler.settings import AutoscalerSettings

__all__ = [
    "AutoscalerSettings",
    "CapacityController",
    "Metrics",
    "Position",
    "recheck",
    "step",
]
