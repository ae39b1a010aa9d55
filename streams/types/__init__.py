"""Interfaces shared across onceflow's packages, kept here so implementations
never import each other in circles (the faust habit)."""

from onceflow.streams.types.interfaces import (
    ContentStore,
    Reducer,
    Routed,
    Sensor,
    State,
    StateValue,
)

__all__ = ["ContentStore", "Reducer", "Routed", "Sensor", "State", "StateValue"]
