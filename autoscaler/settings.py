"""The capacity controller's settings (`ONCEFLOW_AUTOSCALER__*`)."""

from __future__ import annotations

from pydantic import Field

from onceflow.streams.settings import StreamsSettings
from onceflow.streams.types import SettingsGroup

__all__ = ["AutoscalerRoleSettings", "AutoscalerSettings"]


class AutoscalerSettings(SettingsGroup):
    """The capacity controller's windows, thresholds, cooldowns and bounds (Krako 2.0's)."""

    window_ms: int = Field(default=5000, ge=10, description="fixed windows of logged time")
    scale_up_queue: int = 200
    """a window with more queued work than this counts toward scaling up"""
    scale_up_wait_p95_ms: float = 2000.0
    """or with a submit-to-grant wait p95 above this"""
    scale_up_utilization: float = 0.80
    """or with node utilization above this"""
    scale_up_windows: int = Field(default=3, ge=1)
    """windows in a row that scale up by one replica"""
    scale_up_cooldown_ms: int = Field(default=60_000, ge=0)
    """logged time between two scale-ups"""
    max_replicas: int = Field(default=20, ge=1)
    """the most node agents the controller asks for"""
    scale_down_queue: int = 40
    """a window with less queued work than this (and low wait and utilization) counts toward scaling down"""
    scale_down_wait_p95_ms: float = 1000.0
    """and a submit-to-grant wait p95 below this"""
    scale_down_utilization: float = 0.45
    """and node utilization below this"""
    scale_down_windows: int = Field(default=6, ge=1)
    """windows in a row that scale down by one replica"""
    scale_down_cooldown_ms: int = Field(default=180_000, ge=0)
    """logged time between two scale-downs"""
    min_replicas: int = Field(default=1, ge=0)
    """the fewest node agents the controller asks for"""
    throttle_queue: int = 900
    """queued work at which admission turns THROTTLED"""
    critical_queue: int = 1000
    """queued work at which admission turns CRITICAL (after critical_windows)"""
    critical_windows: int = Field(default=3, ge=1)
    """windows in a row at critical_queue that turn admission CRITICAL"""
    open_queue: int = 500
    """queued work below which admission opens again (after open_windows)"""
    open_windows: int = Field(default=6, ge=1)
    """windows in a row below open_queue that reopen admission"""
    initial_replicas: int | None = Field(
        default=None, description="replicas before the first window (default: the nodes seen)")


class AutoscalerRoleSettings(StreamsSettings):
    """What the capacity controller runs with: the shared settings and its group."""

    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
