"""Run trust scoring: the reducer on the batched shell over heartbeats and outcomes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.streams.runtime.batched import BatchedProcessor
from onceflow.streams.topics.catalog import TopicCatalog
from onceflow.streams.trust._impl.scorer import TrustScorer

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["build_trust", "run_trust"]


def build_trust(settings: StreamsSettings, *, on_ready: Callable[[], None] | None = None,
                group_id: str | None = None) -> BatchedProcessor:
    catalog = TopicCatalog(settings)
    # Heartbeats come every half second from every node and nobody waits on a
    # trust update by the millisecond: the background fetch wait (fewer idle
    # fetches) is enough.
    return BatchedProcessor(
        TrustScorer(settings.trust), settings,
        inputs=[catalog["nodes"].name, catalog["outcomes"].name],
        fact_topic=catalog["trust"].name, on_ready=on_ready,
        group_id=group_id or f"{settings.topic_prefix}trust",
        consumer_overrides=settings.background_consumer(),
    )


def run_trust(settings: StreamsSettings, *, ready_file: Path | None = None) -> None:
    processor = build_trust(settings, on_ready=ready_file.touch if ready_file else None)
    processor.install_signal_handlers()
    processor.run()
