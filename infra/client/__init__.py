"""The Python client: `Client` (sync) and `AsyncClient`, with `Step` to build the units.

    from onceflow import Client, Step

    with Client() as client:
        handle = client.submit(Step.cpu("wu-1", handler="sha256", input=b"hello"),
                               tenant="acme")
        digest = handle.result(timeout=60)

See `docs/client.md`.
"""

from onceflow.infra.client._impl.aio import AsyncClient, AsyncSessionHandle, AsyncUnitHandle
from onceflow.infra.client._impl.client import (
    Client,
    ControlRefused,
    SessionHandle,
    UnitFailed,
    UnitHandle,
)
from onceflow.infra.client._impl.steps import Step
from onceflow.streams.content import ContentIntegrityError

__all__ = [
    "AsyncClient",
    "AsyncSessionHandle",
    "AsyncUnitHandle",
    "Client",
    "ContentIntegrityError",
    "ControlRefused",
    "SessionHandle",
    "Step",
    "UnitFailed",
    "UnitHandle",
]
