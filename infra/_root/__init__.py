"""onceflow: an event-sourced execution platform for AI work on Kafka.

The one import name onceflow installs. Its parts live in the repository's
top-level folders and are installed beneath it (setuptools' package-dir
mapping in `pyproject.toml`): `onceflow.schemas`, `onceflow.streams`,
`onceflow.agents`, `onceflow.billing`, `onceflow.autoscaler`, `onceflow.infra`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onceflow.infra.client import AsyncClient, Client, Step, UnitFailed

__all__ = ["AsyncClient", "Client", "Step", "UnitFailed", "__version__"]

__version__ = "0.1.0"

_CLIENT_NAMES = frozenset({"AsyncClient", "Client", "Step", "UnitFailed"})


def __getattr__(name: str) -> Any:
    """The client, imported when first asked for: `import onceflow` stays light for the
    CLI and the roles, which never use it."""
    if name in _CLIENT_NAMES:
        from onceflow.infra import client

        return getattr(client, name)
    raise AttributeError(f"module 'onceflow' has no attribute {name!r}")
