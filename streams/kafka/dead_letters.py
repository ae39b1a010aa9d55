"""Dead-letter routing: a record that cannot be processed is kept, never dropped.

The record goes to the dead-letter topic unchanged (key, value and its own
headers), with origin headers added, so it can be inspected and re-driven
once the cause is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Message

from onceflow.schemas import DeadLetterRecorded
from onceflow.streams.kafka.producer import EventProducer

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = [
    "DLQ_HEADER_ERROR",
    "DLQ_HEADER_ERROR_TYPE",
    "DLQ_HEADER_OFFSET",
    "DLQ_HEADER_PARTITION",
    "DLQ_HEADER_PROCESSOR",
    "DLQ_HEADER_TOPIC",
    "DeadLetterRouter",
    "OversizedRecord",
    "RecordGate",
    "WrongTopic",
    "dead_letter_from_message",
    "dead_letter_headers",
    "message_headers",
]

DLQ_HEADER_TOPIC = "onceflow.dlq.origin.topic"
DLQ_HEADER_PARTITION = "onceflow.dlq.origin.partition"
DLQ_HEADER_OFFSET = "onceflow.dlq.origin.offset"
DLQ_HEADER_PROCESSOR = "onceflow.dlq.processor"
DLQ_HEADER_ERROR = "onceflow.dlq.error"
DLQ_HEADER_ERROR_TYPE = "onceflow.dlq.error.type"
DLQ_HEADER_FAILED_AT = "onceflow.dlq.failed_at"

_MAX_ERROR_BYTES = 4096


def message_headers(msg: Message) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs, whatever the client handed back."""
    raw: Any = msg.headers() or []
    return [(str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in raw]


def dead_letter_headers(
    topic: str, partition: int, offset: int, processor: str, error: BaseException
) -> list[tuple[str, bytes]]:
    """The origin headers every shell adds to a dead letter."""
    return [
        (DLQ_HEADER_TOPIC, topic.encode()),
        (DLQ_HEADER_PARTITION, str(partition).encode()),
        (DLQ_HEADER_OFFSET, str(offset).encode()),
        (DLQ_HEADER_PROCESSOR, processor.encode()),
        (DLQ_HEADER_ERROR, str(error).encode()[:_MAX_ERROR_BYTES]),
        (DLQ_HEADER_ERROR_TYPE, type(error).__name__.encode()),
        (DLQ_HEADER_FAILED_AT, str(int(time.time() * 1000)).encode()),
    ]


class DeadLetterRouter:
    def __init__(self, producer: EventProducer, topic: str, processor: str) -> None:
        self.producer = producer
        self.topic = topic
        self.processor = processor
        self.routed = 0

    def route(self, msg: Message, error: BaseException) -> None:
        headers = message_headers(msg) + dead_letter_headers(
            str(msg.topic()), msg.partition() or 0, msg.offset() or 0, self.processor, error
        )
        self.producer.send_raw(self.topic, msg.value(), key=msg.key(), headers=headers)
        self.routed += 1


def dead_letter_from_message(msg: Message) -> DeadLetterRecorded:
    """The readable view of a dead-letter record (what `onceflow tail` prints)."""
    headers = dict(message_headers(msg))

    def text(name: str) -> str:
        return headers.get(name, b"").decode(errors="replace")

    return DeadLetterRecorded(
        event_id=f"dlq:{msg.topic()}:{msg.partition()}:{msg.offset()}",
        occurred_at=int(text(DLQ_HEADER_FAILED_AT) or 0),
        origin_topic=text(DLQ_HEADER_TOPIC),
        origin_partition=int(text(DLQ_HEADER_PARTITION) or -1),
        origin_offset=int(text(DLQ_HEADER_OFFSET) or -1),
        processor=text(DLQ_HEADER_PROCESSOR),
        error=text(DLQ_HEADER_ERROR),
        error_type=text(DLQ_HEADER_ERROR_TYPE),
        payload=msg.value() or b"",
        payload_key=msg.key(),
    )


class OversizedRecord(ValueError):
    """A record over `max_event_bytes`: dead-lettered, not decided."""


class WrongTopic(ValueError):
    """A well-formed event of a type its topic never carries (`Topic.carries`)."""


@dataclass(frozen=True)
class RecordGate:
    """What every reader of a topic refuses, one rule for the batched shell and the agent:
    a record too large to be an event (before decoding), and an event of a type its topic
    never carries (after)."""

    max_bytes: int
    #: per topic name, the types it carries (topics without a declaration are absent)
    carries: Mapping[str, frozenset[str]]

    @classmethod
    def for_topics(cls, settings: StreamsSettings, topics: Sequence[str]) -> RecordGate:
        from onceflow.streams.topics.catalog import TopicCatalog

        catalog = TopicCatalog(settings)
        declared = {name: topic.carries for name in topics
                    if (topic := catalog.by_name(name)) is not None
                    and topic.carries is not None}
        return cls(settings.max_event_bytes, declared)

    def before(self, raw: bytes) -> OversizedRecord | None:
        if len(raw) <= self.max_bytes:
            return None
        return OversizedRecord(
            f"a record of {len(raw):,} bytes is over the {self.max_bytes:,} a role decides "
            "on (ONCEFLOW_MAX_EVENT_BYTES): put large payloads in the content store and send "
            "their reference")

    def after(self, event_type: str, topic: str) -> WrongTopic | None:
        carries = self.carries.get(topic)
        if carries is None or event_type in carries:
            return None
        return WrongTopic(f"{event_type} does not belong on {topic}, which carries "
                          f"{', '.join(sorted(carries))}: send it to its own topic")
