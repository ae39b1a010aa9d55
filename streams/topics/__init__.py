"""The topic catalog and its provisioning."""

from onceflow.streams.topics.catalog import (
    CleanupPolicy,
    KeyField,
    Topic,
    TopicCatalog,
    TopicRole,
    partition_for,
)
from onceflow.streams.topics.provisioning import TopicStatus, create_topics, describe_topics

__all__ = [
    "CleanupPolicy",
    "KeyField",
    "Topic",
    "TopicCatalog",
    "TopicRole",
    "TopicStatus",
    "create_topics",
    "describe_topics",
    "partition_for",
]
