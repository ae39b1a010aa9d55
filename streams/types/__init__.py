"""Interfaces shared across onceflow's packages, kept here so implementations
never import each other in circles (the faust habit)."""

from onceflow.streams.types.interfaces import (
    ContentStore,
    CostEstimator,
    PricedWork,
    Reducer,
    Routed,
    Sensor,
    State,
    StateValue,
)
from onceflow.streams.types.settings import SettingsGroup

__all__ = ["ContentStore", "CostEstimator", "PricedWork", "Reducer", "Routed", "Sensor", "SettingsGroup", "State",
           "StateValue"]
