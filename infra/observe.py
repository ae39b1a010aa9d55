"""Watching the system from outside, as the demo, the benchmarks and the tests do: unit
progress followed on the facts, the autoscaler's last word, nodes as rows. The product's
reads (status, the API, the dashboard) ask the read model instead."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message

from onceflow.schemas import (
    CodecError,
    NodeHeartbeat,
    SingleObjectCodec,
    TrustScoreUpdated,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import TopicFollower, read_events, type_fingerprints
from onceflow.streams.scheduler import UnitProgress
from onceflow.streams.topics.catalog import TopicCatalog

__all__ = ["ROLE_GROUPS", "ProgressFollower", "node_rows", "read_capacity", "read_progress",
           "role_members"]

#: each batched processor's consumer group (after the topic prefix), by the role running it
ROLE_GROUPS: tuple[tuple[str, str], ...] = (
    ("scheduler", "scheduler"), ("scheduler", "limiter"), ("billing", "ledger"),
    ("billing", "wallets"), ("billing", "anomalies"), ("trust", "trust"),
    ("autoscaler", "autoscaler"),
)


def role_members(settings: OnceflowSettings, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Each role's groups, as the group coordinator knows them now: the members (by the
    name each gave as its client id) and the partitions each owns. A member that owns
    none stands by (the limiter's one partition has one active member)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.admin_config())
    groups = [f"{settings.topic_prefix}{g}" for _, g in ROLE_GROUPS]
    out: list[dict[str, Any]] = []
    futures = admin.describe_consumer_groups(groups, request_timeout=timeout)
    for (role, name), group in zip(ROLE_GROUPS, groups, strict=True):
        try:
            desc = futures[group].result(timeout)
        except Exception as exc:  # the coordinator is loading, the broker is away
            out.append({"role": role, "group": name, "state": "unknown",
                        "error": str(exc)[:200], "members": []})
            continue
        members = []
        for m in desc.members:
            partitions = sorted({tp.partition for tp in m.assignment.topic_partitions})
            members.append({"member": m.client_id, "host": m.host,
                            "partitions": partitions})
        members.sort(key=lambda m: (m["member"], m["partitions"]))
        out.append({"role": role, "group": name, "state": str(desc.state).rsplit(".", 1)[-1],
                    "members": members})
    return out



class ProgressFollower:
    """Keeps reading the work-unit topic and folding it into a `UnitProgress`."""

    def __init__(self, settings: OnceflowSettings, *, only: frozenset[str] | None = None,
                 from_end: bool = False) -> None:
        """`only`: fold just these event types (checked on the Avro fingerprint, undecoded);
        `from_end`: only what is written from now on (a run that watches its own units
        does not read the history before it)."""
        self.codec = SingleObjectCodec()
        self._wanted = None if only is None else type_fingerprints(self.codec, only)
        self.progress = UnitProgress()
        topic = TopicCatalog(settings)["workunits"].name
        starts = None
        if from_end:
            from onceflow.streams.kafka import make_consumer, partition_count, watermarks

            probe = make_consumer(settings, None)
            try:
                starts = {p: watermarks(probe, topic, p)[1]
                          for p in range(partition_count(probe, topic))}
            finally:
                probe.close()
        self._follower = TopicFollower(settings, [topic], start_offsets=starts)

    def poll(self, timeout: float = 0.2, max_records: int = 100_000) -> int:
        """Fold what has arrived; return how many facts were read."""
        n = 0
        for msg in self._follower.read(timeout, max_records):
            n += 1
            self._fold(msg)
        return n

    def catch_up(self) -> None:
        """Fold everything the topic holds now (up to its high watermarks)."""
        for msg in self._follower.read_to_end():
            self._fold(msg)

    def _fold(self, msg: Message) -> None:
        raw = msg.value() or b""
        if self._wanted is not None and raw[2:10] not in self._wanted:
            return
        try:
            event_type, record = self.codec.decode_record(raw)
        except CodecError:
            return
        self.progress.add_record(event_type, record, msg.timestamp()[1])

    def close(self) -> None:
        self._follower.close()


def read_progress(settings: OnceflowSettings) -> UnitProgress:
    follower = ProgressFollower(settings)
    try:
        follower.catch_up()
        return follower.progress
    finally:
        follower.close()


def read_capacity(settings: OnceflowSettings) -> dict[str, Any]:
    """The autoscaler's latest view: replicas, admission mode, the last window's metrics
    (its recent scale requests and mode changes), by the read model's rule."""
    from onceflow.infra.readmodel._impl.fold import capacity_view

    out: dict[str, Any] = capacity_view(None, None)
    for _, event in read_events(settings, TopicCatalog(settings)["capacity"].name,
                                SingleObjectCodec(), event_types=frozenset({
                                    "capacity.window.closed", "capacity.scale.requested",
                                    "capacity.admission.mode.changed"})):
        out = capacity_view(out, event)
    return out


def node_rows(nodes: dict[str, NodeHeartbeat], now_ms: int,
              trust: dict[str, TrustScoreUpdated] | None = None) -> list[dict[str, Any]]:
    trust = trust or {}
    return [
        {"node_id": n.node_id, "health": n.health_status, "region": n.region,
         "kinds": n.supported_kinds, "concurrency": n.max_concurrency,
         "queue_depth": n.active_queue_depth, "utilization": n.utilization,
         "free_slots": n.available_concurrency, "version": n.version,
         "heartbeat_age_s": round(max(0, now_ms - n.occurred_at) / 1000, 1),
         "trust": trust[n.node_id].trust_score if n.node_id in trust else None,
         "breaker": trust[n.node_id].breaker if n.node_id in trust else "closed"}
        for n in nodes.values()
    ]
