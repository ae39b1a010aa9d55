"""One declarative table of every onceflow topic.

Event topics are keyed by `event_id` (so compaction on a real cluster only
collapses redelivered copies of the same event and keeps the history) but
partitioned by the entity id, so that everything about one work unit lands
in one partition, in order, for its single writer. Table topics are keyed
and partitioned by the entity id and keep the latest value per key.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings


__all__ = [
    "CleanupPolicy",
    "KeyField",
    "Topic",
    "TopicCatalog",
    "TopicRole",
    "partition_for",
]

CleanupPolicy = Literal["compact", "delete", "compact,delete"]
KeyField = Literal["event_id", "node_id", "tenant_id", "wallet_id", "view_name"]
PartitionField = Literal[
    "work_unit_id", "node_id", "tenant_id", "execution_session_id", "event_id", "single"
]
TopicRole = Literal[
    "submissions",
    "reports",
    "workunits",
    "dispatch",
    "llm",
    "nodes",
    "trust",
    "outcomes",
    "queue",
    "capacity",
    "ledger",
    "wallets",
    "anomalies",
    "views",
    "limits",
    "flow",
    "control",
    "clock",
    "deadletters",
]

_WEEK_MS = 7 * 24 * 3600 * 1000


def partition_for(entity_id: str, partitions: int) -> int:
    """The partition of an entity: CRC-32 of its UTF-8 id, modulo the partition count.

    Every onceflow producer uses this function; a producer in another
    language must use the same rule (zlib CRC-32, unsigned) to co-partition.
    """
    return zlib.crc32(entity_id.encode()) % partitions


@dataclass(frozen=True)
class Topic:
    role: TopicRole
    name: str
    key: KeyField
    partition_by: PartitionField
    cleanup_policy: CleanupPolicy
    partitions: int
    retention_ms: int
    description: str
    #: the event types written to it, for a topic whose writers are clients, agents or
    #: operators (None: a processor's facts, whatever types its writer decides)
    carries: frozenset[str] | None = None

    def configs(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}

    def partition_of(self, entity_id: str) -> int:
        if self.partition_by == "single" or self.partitions == 1:
            return 0
        return partition_for(entity_id, self.partitions)


# role, key, partition_by, cleanup, retention, fixed partitions, description
_TABLE: tuple[tuple[TopicRole, KeyField, PartitionField, CleanupPolicy, int, int | None, str], ...] = (
    ("submissions", "event_id", "work_unit_id", "compact,delete", -1, None,
     "workunit.submitted from clients; the scheduler's intake"),
    ("reports", "event_id", "work_unit_id", "compact,delete", _WEEK_MS, None,
     "what node agents report about a unit (claims, staged effects, results reported, failures), "
     "dependency notices, and the scheduler's clock ticks, ordered with the reports"),
    ("workunits", "event_id", "work_unit_id", "compact,delete", -1, None,
     "the scheduler's facts (its changelog): scheduled, deferred, grants, settlements, retries"),
    ("dispatch", "event_id", "node_id", "delete", _WEEK_MS, None,
     "what a node must see: scheduled, grants, claim rejections, cancels; a node reads its partition"),
    ("llm", "event_id", "work_unit_id", "compact,delete", -1, None,
     "llm.invocation.completed / failed"),
    ("nodes", "node_id", "node_id", "compact", -1, None, "node.heartbeat, latest per node"),
    ("trust", "node_id", "node_id", "compact", -1, None, "trust.score.updated, latest per node"),
    ("outcomes", "event_id", "node_id", "delete", _WEEK_MS, None,
     "how each attempt ended, by the node that ran it (accepted completions, failures, lease "
     "timeouts): the scheduler's facts routed for trust, co-partitioned with nodes"),
    ("queue", "event_id", "single", "delete", _WEEK_MS, 1,
     "scheduler.queue.sampled: each scheduler partition's queue, about once a second"),
    ("capacity", "event_id", "single", "compact,delete", -1, 1,
     "capacity.scale.requested and capacity.admission.mode.changed"),
    ("ledger", "event_id", "work_unit_id", "compact,delete", -1, None,
     "the ledger's facts: ledger.line_item keyed by line_item_id (its event id), and "
     "ledger.charge.held for invocations waiting for their unit to settle"),
    ("wallets", "wallet_id", "work_unit_id", "compact", -1, None,
     "wallet.updated, latest per wallet and ledger partition: partition p holds the partial "
     "wallets folded from ledger partition p; a wallet is the sum of its partials"),
    ("anomalies", "event_id", "work_unit_id", "compact,delete", -1, None,
     "billing.anomaly findings, in the partition of the unit they were found in"),
    ("views", "view_name", "single", "compact", -1, 1,
     "view.defined: ksql-style views over the ledger, latest definition per name"),
    ("limits", "event_id", "single", "delete", _WEEK_MS, 1,
     "flow.slot.requested / released and flow.retry.requested from every scheduler partition, "
     "the ledger's billed line items and settlements, an operator's flow.session.limits.set: "
     "the limiter's intake"),
    ("flow", "event_id", "single", "compact,delete", -1, 1,
     "the limiter's facts (its changelog): slots granted, requests queued, slots freed"),
    ("control", "event_id", "work_unit_id", "compact,delete", -1, None,
     "pause / resume / cancel, human input, operator resolutions"),
    ("clock", "event_id", "single", "delete", _WEEK_MS, None,
     "clock.tick for roles that only need time (the scheduler's ticks ride on reports)"),
    ("deadletters", "event_id", "event_id", "delete", _WEEK_MS * 4, None,
     "records that failed to decode or validate, unchanged, with origin headers"),
)


#: What the topics written from outside the processors carry: a record of another known
#: type there was sent to the wrong topic, and its reader dead-letters it.
_CARRIES: dict[TopicRole, frozenset[str]] = {
    "submissions": frozenset({"workunit.submitted"}),
    "control": frozenset({"control.requested", "control.operator.resolved",
                          "control.human_input.submitted", "control.cancel.requested",
                          "control.session.paused", "control.session.resumed"}),
    "llm": frozenset({"llm.invocation.completed", "llm.invocation.failed"}),
    "nodes": frozenset({"node.heartbeat"}),
    "queue": frozenset({"scheduler.queue.sampled"}),
    "dispatch": frozenset({"workunit.scheduled", "workunit.claim.granted",
                           "workunit.claim.rejected", "workunit.cancelled"}),
    "limits": frozenset({"flow.slot.requested", "flow.slot.released", "flow.retry.requested",
                         "ledger.line_item",
                         "ledger.unit.settled", "flow.session.limits.set"}),
}


class TopicCatalog:
    """The topics of one onceflow deployment (names carry the configured prefix)."""

    def __init__(self, settings: StreamsSettings) -> None:
        self.settings = settings
        self._topics: dict[TopicRole, Topic] = {}
        for role, key, part_by, cleanup, retention, fixed, desc in _TABLE:
            name = f"{settings.topic_prefix}{role}"
            partitions = fixed or settings.topic_partitions(name)
            self._topics[role] = Topic(role, name, key, part_by, cleanup, partitions, retention,
                                       desc, _CARRIES.get(role))

    def __getitem__(self, role: TopicRole) -> Topic:
        return self._topics[role]

    def __iter__(self) -> Iterator[Topic]:
        return iter(self._topics.values())

    def all(self) -> list[Topic]:
        return list(self._topics.values())

    def by_name(self, name: str) -> Topic | None:
        for topic in self._topics.values():
            if name in (topic.name, topic.role):
                return topic
        return None

    def resolve(self, name_or_role: str) -> str:
        """A topic role (`workunits`) or full name, as a full name."""
        topic = self.by_name(name_or_role)
        return topic.name if topic else name_or_role
