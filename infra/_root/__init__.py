"""onceflow: an event-sourced execution platform for AI work on Kafka.

The one import name onceflow installs. Its parts live in the repository's
top-level folders and are installed beneath it (setuptools' package-dir
mapping in `pyproject.toml`): `onceflow.schemas`, `onceflow.streams`,
`onceflow.agents`, `onceflow.billing`, `onceflow.autoscaler`, `onceflow.infra`.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
