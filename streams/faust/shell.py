"""Run a `Reducer` as a faust agent, with its state in a RocksDB-backed faust table."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import faust

from onceflow.schemas import CodecError, Event, EventCodec, SingleObjectCodec
from onceflow.streams.kafka.dead_letters import dead_letter_headers
from onceflow.streams.log import get_logger
from onceflow.streams.runtime.facts import fact_headers
from onceflow.streams.state import serde
from onceflow.streams.state.serde import seen_key
from onceflow.streams.types import Reducer

__all__ = ["TableState", "attach_reducer"]

_SEEN = "\x00seen:"


class TableState:
    """The `State` protocol over a faust table (values JSON-shaped)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str, default: Any = None) -> Any:
        value = self.table.get(key)
        return default if value is None else value

    def set(self, key: str, value: Any) -> None:
        self.table[key] = value

    def delete(self, key: str) -> None:
        self.table.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, Any]]:
        keys = sorted(
            (k for k in self.table
             if not k.startswith(_SEEN) and k.startswith(prefix) and (stop is None or k < stop)
             and (start is None or k >= start)),
            key=str.encode,
        )
        for key in keys:
            yield key, self.table[key]

    def has_seen(self, event_id: str) -> bool:
        return _SEEN + event_id in self.table

    def mark_seen(self, event_id: str, at: int = 0) -> None:
        # faust's tables keep their marks for ever (generation 0): the shell for
        # users' low-rate processors, not the hot path whose state is bounded
        self.table[_SEEN + event_id] = 1

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Same keys as `PartitionStore.raw_items`, so fingerprints compare across shells."""
        for key in sorted(self.table, key=str.encode):
            if key.startswith(_SEEN):
                yield seen_key(0, key[len(_SEEN):]), b"1"
            else:
                yield b"s\x00" + key.encode(), serde.dumps(self.table[key])


def attach_reducer(
    app: faust.App,
    reducer: Reducer,
    *,
    input_topic: str,
    fact_topic: str,
    dead_letter_topic: str,
    codec: EventCodec | None = None,
    partitions: int | None = None,
) -> tuple[Any, Any]:
    """Create the table and the agent that folds `input_topic` through `reducer`.

    `partitions`: the input topic's partition count when it differs from the
    app's default (faust wants the table's changelog co-partitioned with it).
    """
    codec = codec or SingleObjectCodec()
    log = get_logger(processor=reducer.name, shell="faust")
    table = app.Table(f"{reducer.name}-state", default=None, key_type=str, value_type=None,
                      partitions=partitions)
    source = app.topic(input_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    facts = app.topic(fact_topic, key_serializer="raw", value_serializer="raw")
    dead = app.topic(dead_letter_topic, key_serializer="raw", value_serializer="raw")
    state = TableState(table)
    from onceflow.streams.metrics import active_sensor

    sensor = active_sensor()  # faust reads one event at a time: each is a batch of one

    async def process(stream: faust.StreamT) -> AsyncIterator[None]:
        async for ev in stream.events():
            msg = ev.message
            began = time.perf_counter()
            try:
                event: Event = codec.decode(msg.value)
            except CodecError as exc:
                if sensor is not None:
                    sensor.on_dead_letter(reducer.name, str(msg.topic), str(exc))
                log.warning("record.dead_lettered", topic=msg.topic, offset=msg.offset,
                            error=str(exc)[:200])
                original = msg.headers or []
                if isinstance(original, Mapping):
                    original = list(original.items())
                headers = list(original) + dead_letter_headers(
                    str(msg.topic), msg.partition, msg.offset, reducer.name, exc
                )
                await dead.send(key=msg.key, value=msg.value, headers=headers)
                yield None
                continue
            if state.has_seen(event.event_id):
                yield None
                continue
            decided = list(reducer.decide(state, event))
            for i, fact in enumerate(decided, start=1):
                await facts.send(key=fact.event_id.encode(), value=codec.encode(fact),
                                 partition=msg.partition,
                                 headers=fact_headers(event.event_id, i, len(decided)))
                reducer.evolve(state, fact)
            if decided:
                state.mark_seen(event.event_id)
            if sensor is not None:
                sensor.on_batch(reducer.name, 1, len(decided), time.perf_counter() - began)
                if decided:
                    sensor.on_facts(reducer.name, decided)
            yield None

    agent = app.agent(source, name=f"{reducer.name}-agent")(process)
    return agent, table
