"""The clock: time entering the log as tick events, one per partition per interval.

Reducers never read the wall clock; a lease or a retry falls due when a
tick at or after its time is folded. Ticks are produced into the topic the
reducer reads its reports from (partition by partition), so that a tick is
ordered after everything reported before it was made.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from onceflow.schemas import ClockTick, EventCodec, SingleObjectCodec
from onceflow.streams.ids import derive_event_id
from onceflow.streams.kafka.producer import EventProducer
from onceflow.streams.log import get_logger

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["Ticker", "tick_event"]


def tick_event(topic: str, partition: int, at_ms: int, sequence: int) -> ClockTick:
    return ClockTick(
        event_id=derive_event_id(f"{topic}:{partition}:{at_ms}", "tick"),
        occurred_at=at_ms, partition=partition, sequence=sequence,
    )


class Ticker:
    """A background thread that ticks every partition of one topic."""

    def __init__(
        self,
        settings: StreamsSettings,
        topic: str,
        partitions: int,
        interval_ms: int,
        codec: EventCodec | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.interval = interval_ms / 1000
        self._producer = EventProducer(settings, codec or SingleObjectCodec())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onceflow-ticker", daemon=True)
        self.log = get_logger(component="clock", topic=topic)
        self.sequence = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sequence += 1
            at = int(time.time() * 1000)
            try:
                for p in range(self.partitions):
                    self._producer.send(self.topic, tick_event(self.topic, p, at, self.sequence),
                                        partition=p)
                self._producer.poll(0)
            except Exception as exc:  # a full queue or a broker hiccup: the next tick follows
                self.log.warning("tick.failed", error=str(exc)[:200])
        self._producer.flush()
