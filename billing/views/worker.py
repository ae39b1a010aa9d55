"""Run the views processor: the ledger sink, the definitions follower and the HTTP API."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onceflow.billing.views._impl.engine import ViewEngine
from onceflow.billing.views._impl.server import create_app
from onceflow.billing.views._impl.service import ViewService
from onceflow.billing.views._impl.sink import LedgerSink
from onceflow.schemas import SingleObjectCodec, ViewDefined
from onceflow.streams.kafka import (
    EventProducer,
    make_consumer,
    partition_count,
    read_topic_to_end,
    watermarks,
)
from onceflow.streams.log import get_logger
from onceflow.streams.topics.catalog import TopicCatalog

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from onceflow.billing.settings import BillingRoleSettings

__all__ = ["ViewsProcessor", "run_views"]


class ViewsProcessor:
    """One replica: its own DuckDB file, every ledger partition, every view definition."""

    def __init__(self, settings: BillingRoleSettings, db_path: Path | None = None) -> None:
        self.settings = settings
        self.catalog = TopicCatalog(settings)
        path = db_path or Path(settings.member_state_dir()) / "views" / "ledger.duckdb"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = ViewEngine(path, credits=dict(settings.billing.prepaid_credits),
                                 dedupe_window=settings.billing.views_dedupe_window)
        self._producer = EventProducer(settings, SingleObjectCodec())
        self.service = ViewService(self.engine, publish=self._publish)
        self.sink = LedgerSink(self.engine, settings)
        self.stop = threading.Event()
        self.log = get_logger(processor="views")
        self._threads: list[threading.Thread] = []

    def _publish(self, event: ViewDefined) -> None:
        self._producer.send(self.catalog["views"], event)
        self._producer.flush()

    def load_definitions(self) -> None:
        """Every view defined so far (latest per name), before serving anything."""
        codec = SingleObjectCodec()
        latest: dict[str, ViewDefined] = {}
        for msg in read_topic_to_end(self.settings, self.catalog["views"].name):
            raw = msg.value()
            if raw is None:
                continue
            event = codec.decode(raw)
            if isinstance(event, ViewDefined):
                latest[event.view_name] = event
        self.engine.forget_except(n for n, e in latest.items() if not e.dropped)
        for event in latest.values():
            self.service.apply(event)
        self._definitions_from = self._views_end()

    def _views_end(self) -> int:
        c = make_consumer(self.settings, None)
        try:
            partition_count(c, self.catalog["views"].name)
            return watermarks(c, self.catalog["views"].name, 0)[1]
        finally:
            c.close()

    def _follow_definitions(self) -> None:
        """Definitions other replicas publish, applied as they come."""
        from confluent_kafka import TopicPartition

        codec = SingleObjectCodec()
        c = make_consumer(self.settings, None, **{"enable.partition.eof": False,
                                                  **self.settings.background_consumer()})
        c.assign([TopicPartition(self.catalog["views"].name, 0, self._definitions_from)])
        try:
            while not self.stop.is_set():
                for msg in c.consume(num_messages=100, timeout=0.5):
                    raw = msg.value()
                    if msg.error() is None and raw is not None:
                        event = codec.decode(raw)
                        if isinstance(event, ViewDefined):
                            self.service.apply(event)
        finally:
            c.close()

    def start(self) -> None:
        self.load_definitions()
        for target in (lambda: self.sink.run(self.stop), self._follow_definitions):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for q in list(self.service.push_queries):
            self.service.close_query(q)
        for t in self._threads:
            t.join(30)
        self.engine.close()
        # Drop the clients now, not at garbage collection (maybe after the broker is gone).
        self._producer.flush()
        del self._producer
        self.sink.close()


def run_views(settings: BillingRoleSettings, *, host: str = "127.0.0.1", port: int = 8088,
              ready_file: Path | None = None,
              extend: Callable[[FastAPI], None] | None = None,
              caught_up: Callable[[], bool] | None = None) -> None:
    """Block until SIGTERM: keep the ledger in DuckDB and serve the ksql-style API. Ready
    once serving and caught up with the log (the sink, and `caught_up` when given: what
    `extend` added reads from the log too)."""
    import time

    import uvicorn

    processor = ViewsProcessor(settings)
    processor.start()
    app = create_app(processor.service, settings.api_token)
    if extend is not None:
        extend(app)  # more routes in the same service (the onceflow API)
    # A stopping service waits at most 2 s for open responses (a followed event stream
    # may be open for minutes): its clients reconnect to the next one.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                           log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=2))
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # In a thread, uvicorn leaves the signals to us.
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    processor.log.info("views.serving", url=f"http://{host}:{port}")
    try:
        while not stopping.is_set() and not (server.started and processor.sink.caught_up.is_set()
                                             and (caught_up is None or caught_up())):
            if not thread.is_alive():
                raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
            time.sleep(0.05)
        if ready_file is not None and not stopping.is_set():
            ready_file.touch()
        stopping.wait()
    finally:
        server.should_exit = True
        thread.join(10)
        processor.close()
