"""The scheduler's settings (`ONCEFLOW_SCHEDULER__*`): placement weights, leases, retries, admission."""

from __future__ import annotations

from pydantic import Field

from onceflow.streams.types import SettingsGroup

__all__ = ["SchedulerSettings"]


class SchedulerSettings(SettingsGroup):
    """The scheduler's constants (Krako 2.0's numbers as defaults)."""

    weight_capacity: float = 0.35
    """placement score weight of a node's free capacity"""
    weight_load: float = 0.30
    """placement score weight of a node's idleness (1 - utilization)"""
    weight_trust: float = 0.25
    """placement score weight of a node's trust score"""
    weight_region: float = 0.10
    """placement score weight of a region match"""
    default_trust: float = 0.5
    """trust of a node no score has been published for"""
    stale_heartbeat_ms: int = Field(default=60_000, ge=1, description="older: trust halved")
    node_expiry_ms: int = Field(
        default=180_000, ge=1,
        description="a node silent this long is filtered out (heartbeat_expired)",
    )
    anti_affinity_streak: int = 5
    """wins in a row after which a near-tie goes to the runner-up"""
    anti_affinity_margin: float = 0.03
    """how close the runner-up's score must be for anti-affinity to apply"""
    throttled_admits: list[str] = Field(default_factory=lambda: ["critical", "p0", "p1"])
    """priorities THROTTLED mode still admits; the rest are deferred"""
    critical_admits: list[str] = Field(
        default_factory=lambda: ["critical", "p0", "p1"],
        description="priorities CRITICAL mode still admits; set to [critical, p0] to reject p1",
    )
    approval_timeout_ms: int = Field(default=3_600_000, ge=1)
    """how long a unit that requires an approval waits for one (logged ms) unless it says"""
    unknown_parent_ms: int = Field(default=300_000, ge=1)
    """how long a child waits for a parent nobody submitted before it fails (unknown_parent)"""
    cycle_probe_depth: int = Field(default=32, ge=2)
    """the longest chain of waits a depends_on cycle search follows"""
    claim_timeout_ms: int = Field(default=10_000, ge=1,
                                  description="a dispatch nobody claimed in time is re-placed")
    retry_base_ms: int = 500
    """the first retry's backoff; it doubles with every failure"""
    retry_cap_ms: int = 30_000
    """the longest retry backoff"""
    retry_jitter_ratio: float = 0.2
    """deterministic jitter added to a backoff, as a share of it"""
    retry_budget: float = Field(default=40, ge=0)
    """retries a tenant may spend in a burst (Krako 2.0's token bucket), across every scheduler partition: the limiter keeps it"""
    retry_budget_per_minute: float = Field(default=20, ge=0)
    """how fast a tenant's retry budget refills, per minute of logged time"""
    breaker_probe_interval_ms: int = Field(default=5000, ge=0)
    """a half-open node (its breaker probing) gets one unit per this much logged time"""
    retryable_errors: list[str] = Field(
        default_factory=lambda: ["network_transient", "node_timeout", "admission_reject"]
    )
    """error codes a failed attempt is retried for (others fail the unit)"""
    tick_interval_ms: int = Field(default=200, ge=10)
    """how often the scheduler's clock ticks (leases, retries and deferrals are checked on ticks)"""
    queue_sample_ms: int = Field(default=1000, ge=10,
                                 description="how often (logged time) each partition samples "
                                             "its queue for the autoscaler")
    deferred_per_tick: int = Field(default=500, ge=1)
    """units a tick looks at again at most (due leases, retries, deferred units)"""
    retired_per_tick: int = Field(default=1000, ge=1)
    """settled units past the retention horizon a tick forgets at most (one fact lists them)"""
