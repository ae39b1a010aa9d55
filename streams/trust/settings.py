"""Trust scoring's settings (`ONCEFLOW_TRUST__*`): every constant of the trust model."""

from __future__ import annotations

from pydantic import Field

from onceflow.streams.types import SettingsGroup

__all__ = ["TrustSettings"]


class TrustSettings(SettingsGroup):
    """The trust model (Beta-Binomial reliability, timeout and health penalties, decay) and each node's circuit breaker; every constant is a setting."""

    prior_alpha: float = Field(default=2.0, gt=0)
    """Beta-Binomial prior successes of a new node"""
    prior_beta: float = Field(default=2.0, gt=0)
    """Beta-Binomial prior failures of a new node"""
    timeout_lambda: float = Field(default=0.2, gt=0, le=1, description="EWMA weight of a new "
                                                                        "observation")
    timeout_cap: float = Field(default=0.4, ge=0, le=1)
    """the largest penalty lease timeouts can add up to"""
    health_penalties: dict[str, float] = Field(default_factory=lambda: {
        "healthy": 0.0, "degraded": 0.2, "down": 0.5, "draining": 0.0})
    """penalty by heartbeat health state (JSON)"""
    decay_per_hour: float = Field(default=0.98, gt=0, le=1,
                                  description="how much of the evidence is kept per hour of "
                                              "logged time (toward the prior)")
    breaker_bucket_ms: int = Field(default=5000, ge=100)
    """the breaker counts attempts in buckets of this much logged time (its windows' grain)"""
    breaker_window_ms: int = Field(default=60_000, ge=1000)
    """the breaker counts a node's attempts over this much logged time"""
    breaker_min_attempts: int = Field(default=60, ge=1)
    """attempts in the window before the failure ratio can open the breaker"""
    breaker_failure_ratio: float = Field(default=0.5, ge=0, le=1)
    """the breaker opens when more than this share of the window's attempts failed"""
    breaker_timeout_window_ms: int = Field(default=30_000, ge=1000)
    """the breaker counts a node's lease timeouts over this much logged time"""
    breaker_timeouts: int = Field(default=20, ge=1)
    """lease timeouts in the timeout window that open the breaker"""
    breaker_open_ms: int = Field(default=30_000, ge=0)
    """how long an open breaker keeps work away before it lets probes through"""
    breaker_close_after: int = Field(default=5, ge=1)
    """successful probes in a row that close a half-open breaker"""
    min_change: float = Field(default=0.001, ge=0,
                              description="heartbeats only emit an update when the score moved "
                                          "this much (outcomes always do)")
