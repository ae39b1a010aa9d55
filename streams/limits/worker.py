"""Run the limiter: its reducer on the batched shell over the one-partition `limits` topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from onceflow.streams.limits._impl.limiter import Limiter
from onceflow.streams.runtime.batched import BatchedProcessor
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["build_limiter"]


def build_limiter(settings: StreamsSettings, *, on_ready: Callable[[], None] | None = None,
                  group_id: str | None = None) -> BatchedProcessor:
    """The limiter; schedulers start it beside themselves when it is needed (`limiter_needed`)."""
    catalog = TopicCatalog(settings)
    return BatchedProcessor(
        Limiter.from_settings(settings), settings,
        inputs=[catalog["limits"].name], fact_topic=catalog["flow"].name, on_ready=on_ready,
        group_id=group_id or f"{settings.topic_prefix}limiter",
    )
