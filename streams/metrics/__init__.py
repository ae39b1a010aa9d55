"""Metrics: each role's `/metrics` for Prometheus, fed through the `Sensor` hook."""

from onceflow.streams.metrics._impl.prometheus import (
    PrometheusSensor,
    active_sensor,
    serve_metrics,
)

__all__ = ["PrometheusSensor", "active_sensor", "serve_metrics"]
