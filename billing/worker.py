"""Run billing: the ledger, the wallets and the anomaly checker, one consumer group each.

The three run as threads of one `onceflow worker billing` process: one
process keeps the local stack small on a 2-core machine, and each can still
be scaled on its own on a cluster, since each is its own consumer group with
its own state. Nobody waits on billing the way agents wait on the
scheduler, so its consumers use the background fetch wait: an idle fetch
waits longer (less broker CPU), and Kafka still answers it as soon as a
record arrives.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onceflow.billing._impl.anomalies import AnomalyChecker
from onceflow.billing._impl.ledger import Ledger
from onceflow.billing._impl.pricing import load_price_book
from onceflow.billing._impl.wallets import WalletFolder
from onceflow.streams.limits import limiter_needed
from onceflow.streams.log import get_logger
from onceflow.streams.runtime.batched import BatchedProcessor
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from onceflow.billing.settings import BillingRoleSettings

__all__ = ["build_anomaly_checker", "build_billing", "build_ledger", "build_wallets",
           "run_billing"]


def build_ledger(settings: BillingRoleSettings, *, on_ready: Callable[[], None] | None = None,
                 group_id: str | None = None) -> BatchedProcessor:
    catalog = TopicCatalog(settings)
    return BatchedProcessor(
        Ledger(settings.billing, load_price_book(settings.billing),
               catalog["limits"] if limiter_needed(settings) else None,
               horizon_ms=settings.retention_horizon_ms), settings,
        inputs=[catalog["workunits"].name, catalog["llm"].name],
        fact_topic=catalog["ledger"].name,
        group_id=group_id or f"{settings.topic_prefix}ledger", on_ready=on_ready,
        consumer_overrides=settings.background_consumer(),
    )


def build_wallets(settings: BillingRoleSettings, *, on_ready: Callable[[], None] | None = None,
                  group_id: str | None = None) -> BatchedProcessor:
    catalog = TopicCatalog(settings)
    return BatchedProcessor(
        WalletFolder(settings.billing, catalog["ledger"]), settings,
        inputs=[catalog["ledger"].name], fact_topic=catalog["wallets"].name,
        group_id=group_id or f"{settings.topic_prefix}wallets", on_ready=on_ready,
        consumer_overrides=settings.background_consumer(),
    )


def build_anomaly_checker(settings: BillingRoleSettings, *,
                          on_ready: Callable[[], None] | None = None,
                          group_id: str | None = None) -> BatchedProcessor:
    catalog = TopicCatalog(settings)
    return BatchedProcessor(
        AnomalyChecker(), settings,
        inputs=[catalog["workunits"].name, catalog["llm"].name, catalog["ledger"].name],
        fact_topic=catalog["anomalies"].name, recovery="inputs",
        group_id=group_id or f"{settings.topic_prefix}anomalies", on_ready=on_ready,
        consumer_overrides=settings.background_consumer(),
    )


def build_billing(settings: BillingRoleSettings, *, on_ready: Callable[[], None] | None = None,
                  ) -> list[BatchedProcessor]:
    """The three billing processors; `on_ready` once all three have their partitions."""
    builders = (build_ledger, build_wallets, build_anomaly_checker)
    remaining = [len(builders)]
    lock = threading.Lock()

    def one_ready() -> None:
        with lock:
            remaining[0] -= 1
            done = remaining[0] == 0
        if done and on_ready is not None:
            on_ready()

    return [build(settings, on_ready=one_ready) for build in builders]


def run_billing(settings: BillingRoleSettings, *, ready_file: Path | None = None) -> None:
    """Block until SIGTERM, running the three billing processors."""
    log = get_logger(role="billing")
    stop = threading.Event()
    processors = build_billing(settings, on_ready=ready_file.touch if ready_file else None)

    def request_stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threads = [threading.Thread(target=p.run, kwargs={"stop": stop}, name=p.reducer.name)
               for p in processors]
    log.info("billing.starting", processors=[p.reducer.name for p in processors])
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
            if not all(t.is_alive() for t in threads):
                stop.set()  # one processor died: stop the rest, let supervision restart us
    finally:
        stop.set()
        for t in threads:
            t.join()
