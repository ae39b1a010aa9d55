"""Kafka plumbing: the event producer, consumer helpers and dead-letter routing."""

from onceflow.streams.kafka.consumer import (
    TopicFollower,
    assign_from_committed,
    consumer_lag,
    log_consume_error,
    make_consumer,
    partition_count,
    read_events,
    read_partition_to_end,
    read_topic_to_end,
    type_fingerprints,
    watermarks,
)
from onceflow.streams.kafka.dead_letters import (
    DLQ_HEADER_ERROR,
    DLQ_HEADER_ERROR_TYPE,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_PROCESSOR,
    DLQ_HEADER_TOPIC,
    DeadLetterRouter,
    dead_letter_from_message,
    dead_letter_headers,
    message_headers,
)
from onceflow.streams.kafka.producer import DeliveryError, EventProducer
from onceflow.streams.kafka.settings import BrokerProfile, KafkaSettings, SecurityProtocol

__all__ = [
    "DLQ_HEADER_ERROR",
    "DLQ_HEADER_ERROR_TYPE",
    "DLQ_HEADER_OFFSET",
    "DLQ_HEADER_PARTITION",
    "DLQ_HEADER_PROCESSOR",
    "DLQ_HEADER_TOPIC",
    "BrokerProfile",
    "DeadLetterRouter",
    "DeliveryError",
    "EventProducer",
    "KafkaSettings",
    "SecurityProtocol",
    "TopicFollower",
    "assign_from_committed",
    "consumer_lag",
    "dead_letter_from_message",
    "dead_letter_headers",
    "log_consume_error",
    "make_consumer",
    "message_headers",
    "partition_count",
    "read_events",
    "read_partition_to_end",
    "read_topic_to_end",
    "type_fingerprints",
    "watermarks",
]
