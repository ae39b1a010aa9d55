"""The limiter: concurrency slots per scope, granted in order, on one partition.

Limits span every scheduler partition (a tenant's or a provider's units live in
all of them), so their counts have a single writer: this reducer, over the
one-partition `limits` topic where schedulers ask for slots and give them back.
A request takes a slot in every one of its scopes at once, or waits in the
queue; a release frees the slots and grants the waiting requests that now fit,
oldest first. Its facts (`flow`) are its changelog, so a replay counts the same.

State: `s:<scope>` the slots in use; `h:<unit>` what a unit holds;
`q:<priority>:<finish tag>:<seq>` a waiting request (read in that order:
priority, then weighted fair queuing by tenant, then arrival) and `w:<unit>` its
key; `seq` the next arrival number; `vt` the virtual time and `vf:<tenant>` each
tenant's last finish tag; `waiting` how many wait (a release with nobody
waiting scans nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onceflow.schemas import Event, SlotGranted, SlotQueued, SlotReleased, SlotRequested
from onceflow.streams.ids import caused_by, restated
from onceflow.streams.limits._impl.scopes import ConcurrencyLimits
from onceflow.streams.topics.catalog import Topic
from onceflow.streams.types import Reducer, Routed, State

__all__ = ["Limiter"]


#: the queue is read by priority first
_RANK: dict[str, int] = {"critical": 0, "p0": 1, "p1": 2, "p2": 3}


def _in_use(state: State, scope: str) -> int:
    n: int = state.get(f"s:{scope}", 0)
    return n


class Limiter(Reducer):
    name = "limiter"
    accepts = frozenset({"flow.slot.requested", "flow.slot.released"})

    def __init__(self, limits: ConcurrencyLimits, reports: Topic, queue_scan: int = 256) -> None:
        self.limits = limits
        self.reports = reports
        self.queue_scan = queue_scan

    def _full(self, state: State, scopes: Sequence[str],
              taken: dict[str, int] | None = None) -> tuple[str, int, int] | None:
        """The first scope with no free slot, with its count and limit (None: all fit)."""
        for scope in scopes:
            limit = self.limits.limit_of(scope)
            if limit is None:
                continue
            used = (taken or {}).get(scope, _in_use(state, scope))
            if used >= limit:
                return scope, used, limit
        return None

    # -- decide ------------------------------------------------------------------------

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if isinstance(event, SlotRequested):
            return self._on_request(state, event)
        if isinstance(event, SlotReleased):
            return self._on_release(state, event)
        return ()

    def _on_request(self, state: State, event: SlotRequested) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        held = state.get(f"h:{wu}")
        if held is not None:
            # asked again (a recovery re-sent it): the unit has its slots; say so again
            return (SlotGranted(**caused_by(event, "granted"), attempt_index=event.attempt_index,
                                scopes=held["scopes"]),)
        if state.get(f"w:{wu}") is not None:
            return ()  # already waiting
        full = self._full(state, event.scopes)
        if full is None:
            return (SlotGranted(**caused_by(event, "granted"), attempt_index=event.attempt_index,
                                scopes=event.scopes),)
        scope, used, limit = full
        # Start-time fair queuing: a tenant's requests follow one another in virtual time,
        # each as long as its cost over the tenant's weight; the queue is read by
        # priority, then by finish tag, so a tenant with many (or costly) units waits
        # behind its own backlog, not in front of everyone else.
        start = max(state.get("vt", 0.0), state.get(f"vf:{event.tenant_id}", 0.0))
        finish = start + event.cost / self.limits.weight_of(event.tenant_id)
        return (SlotQueued(**caused_by(event, "queued"), attempt_index=event.attempt_index,
                           scopes=event.scopes, scope=scope, in_use=used, limit=limit,
                           position=state.get("seq", 0), priority=event.priority,
                           fair_start=round(start, 9), fair_finish=round(finish, 9)),)

    def _on_release(self, state: State, event: SlotReleased) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        held = state.get(f"h:{wu}")
        if held is None and state.get(f"w:{wu}") is None:
            return ()
        facts: list[Event] = [restated(event, "freed")]
        if held is None:
            return facts  # it gave up its place in the queue; no slot comes free
        if not state.get("waiting", 0):
            return facts  # nobody waits: nothing to scan for
        taken = {s: _in_use(state, s) - 1 for s in held["scopes"]}
        for _, waiting in state.items("q:"):
            if len(facts) > self.queue_scan:
                break
            if self._full(state, waiting["scopes"], taken):
                continue
            for s in waiting["scopes"]:
                taken[s] = taken.get(s, _in_use(state, s)) + 1
            facts.append(SlotGranted(
                **caused_by(event, f"granted:{waiting['id']}", tenant_id=waiting["tenant"],
                            execution_session_id=waiting["session"],
                            work_unit_id=waiting["id"]),
                attempt_index=waiting["attempt"], scopes=waiting["scopes"],
                waited_ms=max(0, event.occurred_at - waiting["at"])))
        return facts

    # -- evolve ------------------------------------------------------------------------

    def evolve(self, state: State, fact: Event) -> None:
        wu = fact.work_unit_id or ""
        if isinstance(fact, SlotGranted):
            if state.get(f"h:{wu}") is None:
                for s in fact.scopes:
                    state.set(f"s:{s}", _in_use(state, s) + 1)
            state.set(f"h:{wu}", {"scopes": fact.scopes, "attempt": fact.attempt_index})
            waiting = self._unqueue(state, wu)
            if waiting is not None:
                state.set("vt", max(state.get("vt", 0.0), waiting["start"]))
        elif isinstance(fact, SlotQueued):
            seq: int = state.get("seq", 0)
            key = (f"q:{_RANK[fact.priority]}:{fact.fair_finish:024.9f}:{seq:012d}")
            state.set(key, {"id": wu, "tenant": fact.tenant_id,
                            "session": fact.execution_session_id,
                            "attempt": fact.attempt_index, "scopes": fact.scopes,
                            "at": fact.occurred_at, "start": fact.fair_start})
            state.set(f"w:{wu}", key)
            state.set(f"vf:{fact.tenant_id}", fact.fair_finish)
            state.set("seq", seq + 1)
            state.set("waiting", state.get("waiting", 0) + 1)
        elif isinstance(fact, SlotReleased):
            held = state.get(f"h:{wu}")
            if held is not None:
                for s in held["scopes"]:
                    left = _in_use(state, s) - 1
                    if left > 0:
                        state.set(f"s:{s}", left)
                    else:
                        state.delete(f"s:{s}")
                state.delete(f"h:{wu}")
            self._unqueue(state, wu)

    @staticmethod
    def _unqueue(state: State, wu: str) -> dict[str, Any] | None:
        """Take a unit's request out of the queue; returns it (None: it was not waiting)."""
        key = state.get(f"w:{wu}")
        if key is None:
            return None
        waiting: dict[str, Any] = state.get(key)
        state.delete(key)
        state.delete(f"w:{wu}")
        left = state.get("waiting", 0) - 1
        if left > 0:
            state.set("waiting", left)
        else:
            state.delete("waiting")
        return waiting

    # -- route -------------------------------------------------------------------------

    def route(self, fact: Event) -> Sequence[Routed]:
        """Grants and queue places, to the unit's scheduler partition."""
        if isinstance(fact, SlotGranted | SlotQueued):
            wu = fact.work_unit_id or ""
            return (Routed(self.reports.name, fact, self.reports.partition_of(wu)),)
        return ()

