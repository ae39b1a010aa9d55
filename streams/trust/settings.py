"""Trust scoring's settings (`ONCEFLOW_TRUST__*`): every constant of the trust model."""

from __future__ import annotations

from pydantic import Field

from onceflow.streams.types import SettingsGroup

__all__ = ["TrustSettings"]


class TrustSettings(SettingsGroup):
    """The trust model: Beta-Binomial reliability, timeout and health penalties, decay; every constant is a setting."""

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
    quarantine_below: float = Field(default=0.35, ge=0, le=1,
                                    description="a node scoring below this is not scheduled")
    release_above: float = Field(default=0.45, ge=0, le=1,
                                 description="a quarantined node is released above this")
    min_change: float = Field(default=0.001, ge=0,
                              description="heartbeats only emit an update when the score moved "
                                          "this much (outcomes always do)")
