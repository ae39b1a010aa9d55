"""Run the capacity controller on the faust shell (windows and timers, low rate)."""

from __future__ import annotations

import sys
from pathlib import Path

from autoscaler._impl.controller import CapacityController
from streams.settings import OnceflowSettings
from streams.topics.catalog import TopicCatalog

__all__ = ["run_autoscaler"]


def run_autoscaler(settings: OnceflowSettings, *, ready_file: Path | None = None) -> None:
    """Block until SIGTERM: fold the scheduler's queue samples into capacity decisions."""
    from streams.faust import attach_reducer, make_app

    catalog = TopicCatalog(settings)
    app = make_app(f"{settings.topic_prefix}autoscaler", settings)
    attach_reducer(app, CapacityController(settings.autoscaler),
                   input_topic=catalog["queue"].name, fact_topic=catalog["capacity"].name,
                   dead_letter_topic=catalog["deadletters"].name,
                   partitions=catalog["queue"].partitions)

    @app.task
    async def ready() -> None:  # runs once the worker has started
        if ready_file is not None:
            ready_file.touch()

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
