"""Run the capacity controller on the faust shell (windows and timers, low rate)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.autoscaler._impl.controller import CapacityController
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from onceflow.streams.settings import OnceflowSettings

__all__ = ["run_autoscaler"]


def run_autoscaler(settings: OnceflowSettings, *, ready_file: Path | None = None,
                   fingerprint_file: Path | None = None) -> None:
    """Block until SIGTERM: fold the scheduler's queue samples into capacity decisions.

    `fingerprint_file`: rewritten every half second with the state's fingerprint,
    so a replay of the capacity topic can be compared with the live table.
    """
    from onceflow.streams.faust import attach_reducer, make_app

    catalog = TopicCatalog(settings)
    app = make_app(f"{settings.topic_prefix}autoscaler", settings)
    _agent, table = attach_reducer(app, CapacityController(settings.autoscaler),
                   input_topic=catalog["queue"].name, fact_topic=catalog["capacity"].name,
                   dead_letter_topic=catalog["deadletters"].name,
                   partitions=catalog["queue"].partitions)

    @app.task
    async def ready() -> None:  # runs once the worker has started
        if ready_file is not None:
            ready_file.touch()

    if fingerprint_file is not None:
        @app.timer(0.5)
        async def write_fingerprint() -> None:
            from onceflow.streams.faust import TableState
            from onceflow.streams.runtime.fingerprint import fingerprint_items

            items = list(TableState(table).raw_items())
            tmp = fingerprint_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint_items(items),
                                       "keys": len(items)}))
            os.replace(tmp, fingerprint_file)

    # no faust web server: the role has nothing to serve, and a fixed port (6066) would
    # keep two autoscalers from running on one machine
    sys.argv = [sys.argv[0], "worker", "--without-web", "-l", "warn"]
    app.main()
