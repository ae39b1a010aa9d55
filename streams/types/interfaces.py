"""The interfaces: reducer, state, content store, sensor."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeAlias, runtime_checkable

from onceflow.schemas import ContentRef, Event

__all__ = ["ContentStore", "CostEstimator", "PricedWork", "Reducer", "Routed", "Sensor",
           "State", "StateValue"]

#: What a state key may hold: JSON-shaped data, so that state serialises
#: canonically and two replays can be compared byte for byte.
StateValue: TypeAlias = Any


class State(Protocol):
    """A processor partition's key-value state, as the reducer sees it.

    Values are JSON-shaped and must be treated as immutable: change a value by
    `set`-ting a new one, never by mutating what `get` returned.
    """

    def get(self, key: str, default: StateValue = None) -> StateValue: ...

    def set(self, key: str, value: StateValue) -> None: ...

    def delete(self, key: str) -> None: ...

    def __contains__(self, key: str) -> bool: ...

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, StateValue]]:
        """Keys starting with `prefix`, from `start` and below `stop` if given, in byte order."""
        ...


@dataclass(frozen=True)
class Routed:
    """An output derived from a fact, for a topic other than the processor's own.

    Derived outputs are re-sent after recovery for facts that were written
    after the last checkpoint, so consumers must dedupe them by event id
    (they are the same events with the same ids).
    """

    topic: str
    event: Event
    partition: int | None = None


class Reducer:
    """A processor's logic as a pure decider: no I/O, no wall clock, no randomness.

    `decide(state, event)` returns the facts an input causes; `evolve(state,
    fact)` applies one fact. Every state change is a fact, so folding the fact
    topic from offset 0 rebuilds the state bit for bit; `apply` is the two
    together, which is what unit tests and the faust shell call.
    """

    #: processor name: consumer group, state directory, dead-letter header
    name: str = "reducer"
    #: the event types `decide` acts on, when it ignores every other type; the
    #: shell then skips other records of its inputs without decoding them
    #: (undecodable records are still dead-lettered). None: every type.
    accepts: frozenset[str] | None = None
    #: the layout of the reducer's state: a release that changes it names a new one, and
    #: a store kept in another is rebuilt from the reducer's facts ("": the first)
    state_layout: str = ""

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        raise NotImplementedError

    def evolve(self, state: State, fact: Event) -> None:
        raise NotImplementedError

    def observe(self, event: Event) -> None:
        """A record from one of the processor's global tables (default: ignored).

        Global tables (nodes, trust, capacity) are read whole by every
        instance, outside the partition's log, like a Kafka Streams
        GlobalKTable. Decisions that use them must record what they used.
        """

    def route(self, fact: Event) -> Sequence[Routed]:
        """Outputs for other topics derived from a fact (default: none)."""
        return ()

    def restored(self, partition: int) -> None:
        """A partition's state was just restored from its facts: after a restart, a move
        to this member, or a transaction aborted under it. Whatever the reducer keeps in
        memory about the partition (a memo of what it already looked at) may describe
        decisions that never reached the log: forget it (default: nothing kept)."""

    def apply(self, state: State, event: Event) -> tuple[State, list[Event | Routed]]:
        facts = list(self.decide(state, event))
        outputs: list[Event | Routed] = []
        for fact in facts:
            self.evolve(state, fact)
            outputs.append(fact)
            outputs.extend(self.route(fact))
        return state, outputs


@runtime_checkable
class ContentStore(Protocol):
    """Content-addressed bytes: the digest is the key, writes are idempotent."""

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> ContentRef: ...

    def get(self, ref: ContentRef) -> bytes: ...

    def exists(self, ref: ContentRef) -> bool: ...


class PricedWork(Protocol):
    """What a unit states that its cost can be estimated from (a submission, a unit's spec)."""

    @property
    def kind(self) -> str: ...
    @property
    def simulated_ms(self) -> int: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def llm_tokens(self) -> int: ...
    @property
    def parameters(self) -> dict[str, str]: ...
    @property
    def lease_ms(self) -> int: ...


class CostEstimator(Protocol):
    """What a unit will likely cost before it runs: billing's rule, the scheduler's input.

    Budget admission and fair queuing ask it; billing implements it from its
    price book, so an estimate and a bill never use two different sets of prices.
    """

    def estimate(self, unit: PricedWork) -> Decimal: ...

    def maximum(self, unit: PricedWork) -> Decimal:
        """The most a unit can be billed: what a budget holds for it before it runs."""
        ...

    def rate_tokens(self, unit: PricedWork) -> int:
        """The unit's estimated tokens as token rate limits count them (input plus
        price-weighted output: `onceflow.schemas.weighted_tokens`)."""
        ...

    def max_tokens(self, unit: PricedWork) -> int:
        """The most tokens (input, and output up to `max_tokens`) a unit may use: what a
        session's token limit holds for it before it runs."""
        ...


class Sensor(Protocol):
    """The single hook for metrics (faust's idea): shells report, sensors listen."""

    def on_batch(self, processor: str, records: int, facts: int, seconds: float) -> None: ...

    def on_dead_letter(self, processor: str, topic: str, error: str) -> None: ...

    def on_facts(self, processor: str, facts: Sequence[Event]) -> None:
        """The facts a batch wrote for the first time (not the ones found again while
        rebuilding): what domain metrics are read from."""
        ...

    def on_partitions(self, processor: str, lag: Mapping[tuple[str, int], int],
                      state_bytes: Mapping[int, int]) -> None:
        """Every few seconds: records behind per input partition, and the bytes of each
        partition's local state on disk."""
        ...

    def on_restore(self, processor: str, partition: int, facts: int, seconds: float) -> None:
        """A partition came to this member: its state was restored from the changelog
        (its fact topic) in `seconds`, folding `facts` facts, before anything was decided."""
        ...

    def on_fenced(self, processor: str, reason: str) -> None:
        """The group moved on from this member (or its transaction failed): what it
        decided since its last commit was dropped, and it rejoins."""
        ...
