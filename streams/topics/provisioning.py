"""Idempotent topic creation and a live description of topic configs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from onceflow.streams.topics.catalog import Topic, TopicCatalog

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["TopicStatus", "create_topics", "describe_topics", "ensure_topics"]


@dataclass
class TopicStatus:
    name: str
    exists: bool
    partitions: int = 0
    created: bool = False
    configs: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def _admin(settings: StreamsSettings) -> AdminClient:
    return AdminClient(settings.admin_config())


def ensure_topics(
    settings: StreamsSettings, topics: list[Topic], *, timeout: float = 15.0
) -> list[TopicStatus]:
    """Create the topics that are missing; existing ones are left untouched."""
    admin = _admin(settings)
    existing = admin.list_topics(timeout=timeout).topics
    statuses: list[TopicStatus] = []
    to_create = [t for t in topics if t.name not in existing]
    futures = {}
    if to_create:
        futures = admin.create_topics(
            [
                NewTopic(
                    t.name,
                    num_partitions=t.partitions,
                    replication_factor=settings.replication_factor,
                    config=t.configs(),
                )
                for t in to_create
            ],
            operation_timeout=timeout,
        )
    created = []
    for topic in topics:
        if topic.name in futures:
            try:
                futures[topic.name].result(timeout)
                statuses.append(TopicStatus(topic.name, True, topic.partitions, created=True))
                created.append(topic.name)
            except KafkaException as exc:
                err = exc.args[0]
                if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                    statuses.append(TopicStatus(topic.name, True, topic.partitions))
                else:
                    statuses.append(TopicStatus(topic.name, False, error=str(exc)))
        else:
            parts = len(existing[topic.name].partitions)
            status = TopicStatus(topic.name, True, parts)
            if parts != topic.partitions:
                status.error = (
                    f"has {parts} partitions, the catalog says {topic.partitions}; "
                    "co-partitioned processors need them equal"
                )
            statuses.append(status)
    _wait_for_leaders(admin, created, timeout)
    return statuses


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Return once every partition of `names` has a leader: a topic is usable when its
    creation is committed *and* its broker leads its partitions, a moment later."""
    deadline = time.monotonic() + timeout
    while names:
        topics = admin.list_topics(timeout=timeout).topics
        names = [n for n in names
                 if n not in topics or topics[n].error is not None
                 or any(p.leader < 0 or p.error is not None
                        for p in topics[n].partitions.values())]
        if not names or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def create_topics(settings: StreamsSettings, *, timeout: float = 15.0) -> list[TopicStatus]:
    """Create every catalog topic that does not exist yet (safe to run again)."""
    return ensure_topics(settings, TopicCatalog(settings).all(), timeout=timeout)


def describe_topics(settings: StreamsSettings, *, timeout: float = 15.0) -> list[TopicStatus]:
    """The live partition count and configs of every catalog topic."""
    admin = _admin(settings)
    existing = admin.list_topics(timeout=timeout).topics
    statuses: list[TopicStatus] = []
    for topic in TopicCatalog(settings).all():
        if topic.name not in existing:
            statuses.append(TopicStatus(topic.name, False))
            continue
        status = TopicStatus(topic.name, True, len(existing[topic.name].partitions))
        try:
            (fut,) = admin.describe_configs([ConfigResource("topic", topic.name)]).values()
            status.configs = {
                k: str(v.value) for k, v in sorted(fut.result(timeout).items()) if v.value is not None
            }
        except KafkaException as exc:
            status.error = str(exc)
        statuses.append(status)
    return statuses
