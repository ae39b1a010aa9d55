"""The Kafka client settings and the client configurations built from them.

Flat `ONCEFLOW_*` variables (`ONCEFLOW_BOOTSTRAP_SERVERS`, ...), inherited by
`StreamsSettings`. The embedded broker gets Kafka's defaults plus short group
timeouts and fetch waits, behind `broker_profile`, so that pointing onceflow at
a real cluster is a matter of environment variables, never code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BrokerProfile", "KafkaSettings", "SecurityProtocol"]

BrokerProfile = Literal["embedded", "cluster"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class KafkaSettings(BaseSettings):
    """Where the brokers are, how clients authenticate, and how they batch and wait."""

    model_config = SettingsConfigDict(
        env_prefix="ONCEFLOW_", env_nested_delimiter="__", extra="ignore",
        use_attribute_docstrings=True,
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers (host:port, comma-separated); `onceflow up` records the embedded broker's"""
    broker_profile: BrokerProfile = "embedded"
    """embedded: the local Kafka, with short group timeouts and fetch waits; cluster: Kafka's own client defaults"""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    """how clients talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"""
    sasl_mechanism: str | None = None
    """SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...)"""
    sasl_username: str | None = None
    """SASL user name"""
    sasl_password: SecretStr | None = None
    """SASL password"""
    ssl_ca_location: str | None = None
    """path of the CA certificate that signs the brokers' certificates"""
    ssl_certificate_location: str | None = None
    """path of the client certificate (mutual TLS)"""
    ssl_key_location: str | None = None
    """path of the client certificate's private key"""
    ssl_key_password: SecretStr | None = None
    """password of that private key"""
    ssl_endpoint_identification_algorithm: str | None = None
    """https to check broker host names, none to skip"""
    kafka_extra: dict[str, str] = Field(
        default_factory=dict,
        description="any librdkafka property, passed through verbatim (JSON in the env var)",
    )
    embedded_fetch_wait_ms: int = Field(
        default=100, ge=1,
        description="fetch.wait.max.ms for hot-path consumers on the embedded broker: how "
                    "long an idle fetch waits (Kafka answers a waiting fetch as soon as a "
                    "record arrives, so this costs no latency; shorter costs idle CPU)",
    )
    producer_linger_ms: int = Field(
        default=1, ge=0,
        description="linger.ms of every other producer (agents' claims and reports, clients): "
                    "each hop of a unit waits up to this long for company",
    )
    transactions: bool = Field(
        default=True,
        description="exactly-once v2: each batch of a role's facts, routed outputs and input "
                    "offsets is one Kafka transaction, and a member that lost its partitions "
                    "is fenced (needed for several members per role); false: flush then "
                    "commit, with recovery by replay (one member per role only; lower latency)",
    )
    member: str | None = None
    """this process's name among the members of its role's group: its transactional ids,
    its client id and its state directory (unique per role; default: host and process id)"""
    processor_linger_ms: int = Field(
        default=1, ge=0,
        description="linger.ms of the batched shell's producer: a batch's facts go out in "
                    "few record batches; see bench/ for the figures",
    )

    def kafka_common(self) -> dict[str, Any]:
        """Connection and security settings shared by producers, consumers and admin."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional: dict[str, Any] = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": (
                self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            ),
            "ssl.endpoint.identification.algorithm": self.ssl_endpoint_identification_algorithm,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        conf.update(self.kafka_extra)
        return conf

    def member_id(self) -> str:
        """This member's name: `member`, or the host and process id (unique on a host)."""
        if self.member:
            return self.member
        import os
        import socket

        return f"{socket.gethostname()}-{os.getpid()}"

    def transactional_config(self, transactional_id: str) -> dict[str, Any]:
        """Overrides that make a producer transactional (`transactional_id`: one per
        processor per member, stable across its restarts so a restart fences the last)."""
        # A member that dies inside a transaction holds back read_committed readers
        # of its partitions until the coordinator aborts it after this long.
        timeout = 6000 if self.broker_profile == "embedded" else 10_000
        return {"transactional.id": transactional_id, "transaction.timeout.ms": timeout,
                # Back-to-back transactions (one per batch) meet the last one's markers
                # still being written (CONCURRENT_TRANSACTIONS): retry in milliseconds,
                # not after librdkafka's 100 ms backoff.
                "retry.backoff.ms": 2, "retry.backoff.max.ms": 20,
                # the commit sends what is queued at once: lingering only delays it
                "linger.ms": 0}

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        conf = {
            **self.kafka_common(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": self.producer_linger_ms,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
        }
        conf.update(overrides)
        return conf

    def consumer_config(self, group_id: str | None, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            **self.kafka_common(),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Range assignment keeps partition p of every co-partitioned input
            # topic on the same member, which the batched shell relies on.
            "partition.assignment.strategy": "range",
            # Facts of aborted transactions (a fenced member's) are never acted on.
            "isolation.level": "read_committed",
        }
        if group_id is not None:
            conf["group.id"] = group_id
            # `onceflow status` names each member of a group by its client id.
            conf["client.id"] = self.member_id()
        else:
            conf["group.id"] = "onceflow-reader"  # librdkafka wants one; never joined
        if self.broker_profile == "embedded":
            conf.update({
                # Kafka's smallest session (group.min.session.timeout.ms): a
                # killed role's partitions move on within seconds on one machine.
                "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                "fetch.wait.max.ms": self.embedded_fetch_wait_ms,
            })
        conf.update(overrides)
        return conf

    def background_consumer(self) -> dict[str, Any]:
        """Overrides for consumers off the hot path (tables, readers, progress views):
        Kafka's own fetch wait (500 ms), which costs them no latency either."""
        return {"fetch.wait.max.ms": 500}

    def admin_config(self) -> dict[str, Any]:
        return self.kafka_common()
