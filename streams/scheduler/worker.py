"""Run the scheduler: the reducer on the batched shell, plus its clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.streams.limits import limiter_needed
from onceflow.streams.limits.worker import build_limiter
from onceflow.streams.log import get_logger
from onceflow.streams.runtime.batched import BatchedProcessor, Clock
from onceflow.streams.scheduler._impl.reducer import Scheduler
from onceflow.streams.topics.catalog import TopicCatalog
from onceflow.streams.types import CostEstimator

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["build_scheduler", "run_scheduler"]


def build_scheduler(
    settings: StreamsSettings,
    *,
    estimator: CostEstimator | None = None,
    on_ready: Callable[[], None] | None = None,
    group_id: str | None = None,
    with_clock: bool = True,
) -> BatchedProcessor:
    """The scheduler on the batched shell; `estimator` prices budget holds, fair queuing
    and token rates (billing's `cost_estimator`; None only where no budget is held).
    `with_clock`: tick every partition this member owns into `reports` (see the
    reducer's doc); off only where a test drives logged time itself."""
    catalog = TopicCatalog(settings)
    return BatchedProcessor(
        Scheduler(settings, catalog=catalog, estimator=estimator), settings,
        inputs=[catalog["submissions"].name, catalog["reports"].name, catalog["control"].name],
        fact_topic=catalog["workunits"].name,
        tables=[catalog["nodes"].name, catalog["trust"].name, catalog["capacity"].name],
        group_id=group_id or f"{settings.topic_prefix}scheduler",
        on_ready=on_ready,
        clock=Clock(catalog["reports"].name, settings.scheduler.tick_interval_ms)
        if with_clock else None,
    )


def run_scheduler(settings: StreamsSettings, *, estimator: CostEstimator | None = None,
                  ready_file: Path | None = None, with_clock: bool = True) -> None:
    """Block until SIGTERM: schedule, arbitrate claims, settle, recover; and keep the
    tenants' retry budgets and any limits (the limiter, in a thread)."""
    log = get_logger(role="scheduler")
    processor = build_scheduler(settings, estimator=estimator, with_clock=with_clock,
                                on_ready=ready_file.touch if ready_file else None)
    processor.install_signal_handlers()
    # The limiter runs beside every scheduler (one member of its group is active): it keeps
    # every tenant's retry budget, and the slots and holds when limits or budgets are set.
    # Where limiter members of their own are run (`members` names the limiter), they do.
    limiter_stop = threading.Event()
    limiter = None
    if not settings.members.get("limiter"):
        limiter = threading.Thread(target=build_limiter(settings).run, args=(limiter_stop,),
                                   name="limiter", daemon=True)
        limiter.start()
    log.info("scheduler.starting", clock=with_clock, limiter=limiter_needed(settings),
             limiter_here=limiter is not None)
    try:
        processor.run()
    finally:
        limiter_stop.set()
        if limiter is not None:
            limiter.join(timeout=30)
