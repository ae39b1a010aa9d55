"""The asyncio client: the same operations as `Client`, awaitable.

Each call runs the sync client's in a worker thread (`asyncio.to_thread`): the
Kafka client underneath is thread-based anyway, so this keeps one
implementation of every rule and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from onceflow.infra.client._impl.client import Client, SessionHandle, UnitFailed, UnitHandle
from onceflow.infra.client._impl.steps import Step
from onceflow.schemas import ControlApplied, Event, SessionLimits
from onceflow.settings import OnceflowSettings

__all__ = ["AsyncClient", "AsyncSessionHandle", "AsyncUnitHandle"]


@dataclass
class AsyncUnitHandle:
    sync: UnitHandle

    @property
    def work_unit_id(self) -> str:
        return self.sync.work_unit_id

    async def result(self, timeout: float = 60.0) -> bytes:
        """The result bytes, digest checked (`UnitFailed` when it has none)."""
        return await asyncio.to_thread(self.sync.result, timeout)

    async def outcome(self) -> tuple[str, str, str] | None:
        return await asyncio.to_thread(self.sync.outcome)


@dataclass
class AsyncSessionHandle:
    sync: SessionHandle

    @property
    def steps(self) -> dict[str, AsyncUnitHandle]:
        return {wu: AsyncUnitHandle(h) for wu, h in self.sync.steps.items()}

    async def results(self, timeout: float = 60.0) -> dict[str, bytes | UnitFailed]:
        return await asyncio.to_thread(self.sync.results, timeout)

    async def events(self, timeout: float = 60.0) -> AsyncIterator[Event]:
        """The session's facts as they arrive, until every step has ended."""
        it = self.sync.events(timeout)
        done = object()
        while True:
            event = await asyncio.to_thread(next, it, done)
            if event is done:
                return
            assert isinstance(event, Event)
            yield event


class AsyncClient:
    """`Client`, awaitable: `async with AsyncClient() as client: ...`."""

    def __init__(self, settings: OnceflowSettings | None = None, **options: Any) -> None:
        self.sync = Client(settings, **options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def submit(self, step: Step, *, tenant: str, session: str | None = None,
                     **session_fields: Any) -> AsyncUnitHandle:
        handle = await asyncio.to_thread(lambda: self.sync.submit(
            step, tenant=tenant, session=session, **session_fields))
        return AsyncUnitHandle(handle)

    async def submit_session(self, session_id: str, steps: Sequence[Step], *, tenant: str,
                             limits: SessionLimits | None = None,
                             budget_usd: Decimal | None = None,
                             fail_fast: bool = False) -> AsyncSessionHandle:
        handle = await asyncio.to_thread(lambda: self.sync.submit_session(
            session_id, steps, tenant=tenant, limits=limits, budget_usd=budget_usd,
            fail_fast=fail_fast))
        return AsyncSessionHandle(handle)

    async def pause(self, **target: Any) -> list[ControlApplied]:
        return await asyncio.to_thread(lambda: self.sync.pause(**target))

    async def resume(self, **target: Any) -> list[ControlApplied]:
        return await asyncio.to_thread(lambda: self.sync.resume(**target))

    async def cancel(self, **target: Any) -> list[ControlApplied]:
        return await asyncio.to_thread(lambda: self.sync.cancel(**target))

    async def approve(self, work_unit_id: str, reason: str = "") -> list[ControlApplied]:
        return await asyncio.to_thread(self.sync.approve, work_unit_id, reason)

    async def deny(self, work_unit_id: str, reason: str) -> list[ControlApplied]:
        return await asyncio.to_thread(self.sync.deny, work_unit_id, reason)

    async def answer(self, session: str, step: str, data: bytes, *, tenant: str
                     ) -> list[ControlApplied]:
        return await asyncio.to_thread(lambda: self.sync.answer(session, step, data,
                                                                tenant=tenant))

    async def inbox(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.inbox, tenant)

    async def wallet(self, tenant: str) -> Any:
        return await asyncio.to_thread(self.sync.wallet, tenant)

    async def query(self, sql: str, *, tenant: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(lambda: self.sync.query(sql, tenant=tenant))
