"""Run the capacity controller on the batched shell.

It ran on the faust shell once (its windows are logged time, so it needs no
timers); faust's table writes and offset commits are not atomic, and a kill
between them applied an input twice. On the batched shell its state is stored
with the offsets it reflects, like every other role's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.autoscaler._impl.controller import CapacityController
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from onceflow.autoscaler.settings import AutoscalerRoleSettings
    from onceflow.streams.runtime import BatchedProcessor

__all__ = ["build_autoscaler", "run_autoscaler"]


def build_autoscaler(settings: AutoscalerRoleSettings, *,
                     on_ready: Callable[[], None] | None = None,
                     group_id: str | None = None) -> BatchedProcessor:
    """The controller over the scheduler's queue samples, deciding into `capacity`."""
    from onceflow.streams.runtime import BatchedProcessor

    catalog = TopicCatalog(settings)
    return BatchedProcessor(
        CapacityController(settings.autoscaler), settings,
        inputs=[catalog["queue"].name], fact_topic=catalog["capacity"].name,
        on_ready=on_ready, group_id=group_id or f"{settings.topic_prefix}autoscaler",
        consumer_overrides=settings.background_consumer(),
    )


def run_autoscaler(settings: AutoscalerRoleSettings, *, ready_file: Path | None = None) -> None:
    """Block until SIGTERM: fold the scheduler's queue samples into capacity decisions."""
    processor = build_autoscaler(settings, on_ready=ready_file.touch if ready_file else None)
    processor.install_signal_handlers()
    processor.run()
