"""The scheduler's read-only view of the cluster: nodes, trust, admission mode.

These are global tables (every scheduler partition needs every node), read
from compacted topics outside the partition's own log, the way Kafka
Streams reads a GlobalKTable. Because they are not co-partitioned with the
work units, a decision never relies on replaying them: it records the
inputs it used (candidates, scores, streak, mode) in its fact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from onceflow.schemas import (
    AdmissionMode,
    BreakerState,
    CapacityAdmissionModeChanged,
    Event,
    NodeHeartbeat,
    TrustScoreUpdated,
)
from onceflow.streams.scheduler._impl.placement import NodeView

__all__ = ["ClusterView"]


class ClusterView:
    """Latest heartbeat per node, latest trust per node, the admission mode.

    `dispatched` counts what this process placed on a node that no heartbeat
    of the node can count yet: work on its way (not claimed, nor run out to
    its claim deadline), and work claimed after the node's last heartbeat. A
    heartbeat does not reset the first, since it can be written before
    dispatches placed just earlier arrive; a claim does not end the second
    until a heartbeat written after it, which counts the unit in its queue.
    A burst would otherwise pile onto a node whose free capacity is already
    spoken for (placing again as fast as claims come back, for a whole
    heartbeat interval), and wait there past its lease.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.trust: dict[str, float] = {}
        #: each node's breaker as trust scoring last published it: (state, open until)
        self.breakers: dict[str, tuple[BreakerState, int]] = {}
        #: when this process last placed a probe on each half-open node (logged time)
        self.probed_at: dict[str, int] = {}
        self.mode: AdmissionMode = "OPEN"
        #: per node: the units placed on it and not yet claimed (their slots), by work
        #: unit, so that placements a partition never committed can be taken back
        self.dispatched: dict[str, dict[str, int]] = {}
        #: per node: units it claimed that no heartbeat of it counts yet, by work unit:
        #: (slots, the claim's time on the node's clock)
        self.claimed: dict[str, dict[str, tuple[int, int]]] = {}
        #: grows whenever what placement sees may have improved (a heartbeat,
        #: a trust score, a mode change), so deferred units are looked at
        #: again only when there is something new to see
        self.version = 0

    def observe(self, event: Event) -> None:
        if not isinstance(event, NodeHeartbeat | TrustScoreUpdated
                          | CapacityAdmissionModeChanged):
            return  # the capacity topic also holds the autoscaler's samples and windows
        self.version += 1
        if isinstance(event, NodeHeartbeat):
            current = self.nodes.get(event.node_id)
            if current is not None and current.last_seen > event.occurred_at:
                return  # an older heartbeat read late
            claimed = self.claimed.get(event.node_id)
            if claimed:  # claims it counts (made at or before it, on the node's clock)
                for wu in [wu for wu, (_, at) in claimed.items() if at <= event.occurred_at]:
                    del claimed[wu]
            self.nodes[event.node_id] = NodeView(
                node_id=event.node_id, enabled=event.enabled,
                health_status=event.health_status,
                supported_kinds=tuple(event.supported_kinds),
                available_concurrency=event.available_concurrency,
                queue_depth=event.active_queue_depth, utilization=event.utilization,
                region=event.region, version=event.version, last_seen=event.occurred_at,
            )
        elif isinstance(event, TrustScoreUpdated):
            self.trust[event.node_id] = event.trust_score
            if event.breaker == "closed":
                self.breakers.pop(event.node_id, None)
            else:
                self.breakers[event.node_id] = (event.breaker, event.breaker_until)
        elif isinstance(event, CapacityAdmissionModeChanged):
            self.mode = event.new_mode

    def breaker_at(self, node_id: str, now: int) -> BreakerState:
        """A node's breaker at logged time `now`: an open one past its time probes."""
        state, until = self.breakers.get(node_id, ("closed", 0))
        if state == "open" and now >= until:
            return "half_open"
        return state

    def placeable(self, now: int, probe_interval_ms: int) -> list[NodeView]:
        """Nodes with their free capacity net of what was placed since their heartbeat,
        and their breakers as of `now`."""
        out = []
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            used = sum(self.dispatched.get(node_id, {}).values()) + sum(
                slots for slots, _ in self.claimed.get(node_id, {}).values())
            breaker = self.breaker_at(node_id, now)
            if breaker != "closed":
                last = self.probed_at.get(node_id)
                node = replace(node, breaker=breaker, probe_due=(
                    last is None or now - last >= probe_interval_ms))
            if used:
                node = replace(
                    node, available_concurrency=node.available_concurrency - used,
                    queue_depth=node.queue_depth + used,
                )
            out.append(node)
        return out

    def note_dispatch(self, node_id: str, work_unit_id: str, slots: int, now: int) -> None:
        self.dispatched.setdefault(node_id, {})[work_unit_id] = slots
        if self.breaker_at(node_id, now) != "closed":
            self.probed_at[node_id] = now

    def note_arrived(self, node_id: str, work_unit_id: str, claimed_at: int | None = None
                     ) -> None:
        """A dispatch the node claimed at `claimed_at` (its slots stay taken until a
        heartbeat of the node written after the claim), or that it refused or that ran
        out to its claim deadline (None: nothing of it stays at the node)."""
        placed = self.dispatched.get(node_id)
        slots = None if placed is None else placed.pop(work_unit_id, None)
        if claimed_at is not None and slots is not None:
            self.claimed.setdefault(node_id, {})[work_unit_id] = (slots, claimed_at)

    def forget_dispatches(self, of: Callable[[str], bool]) -> None:
        """Take back the placements of the units `of` picks (a partition restored from its
        facts: placements it decided in a transaction that was aborted never reached a
        node)."""
        for placed in self.dispatched.values():
            for wu in [wu for wu in placed if of(wu)]:
                del placed[wu]
        for claimed in self.claimed.values():
            for wu in [wu for wu in claimed if of(wu)]:
                del claimed[wu]
