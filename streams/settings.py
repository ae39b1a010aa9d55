"""The settings every onceflow process shares (pydantic-settings, prefix `ONCEFLOW_`).

Kafka (`streams/kafka/settings.py`, flat variables), topics, payloads, the
processes' shell, and the groups of the roles that live in `streams/`
(`scheduler`, `limits`, `trust`, as `ONCEFLOW_<ROLE>__*`). The roles above
(`billing`, `agents`, `autoscaler`) each add their group to these in a class
of their own, and `onceflow.settings` composes every one into
`OnceflowSettings`: nothing in `streams/` imports a role above it. What the
roles here need of the groups above is asked through the hooks at the end of
`StreamsSettings` (`prepaid_credits`, `default_llm_provider`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr

from onceflow.streams.kafka.settings import BrokerProfile, KafkaSettings, SecurityProtocol
from onceflow.streams.limits.settings import LimitsSettings
from onceflow.streams.scheduler.settings import SchedulerSettings
from onceflow.streams.trust.settings import TrustSettings

__all__ = [
    "STACK_FILE",
    "BrokerProfile",
    "KafkaSettings",
    "LimitsSettings",
    "LogFormat",
    "SchedulerSettings",
    "SecurityProtocol",
    "StreamsSettings",
    "TrustSettings",
    "load_settings",
]

LogFormat = Literal["auto", "console", "json"]
S = TypeVar("S", bound="StreamsSettings")

STACK_FILE = "stack.json"


class StreamsSettings(KafkaSettings):
    """What every onceflow process is configured with: Kafka, topics, payloads, the
    processes' shell, and the groups of the roles in `streams/`."""

    # --- topics ----------------------------------------------------------------
    topic_prefix: str = "onceflow."
    """prefix of every topic name, so that several deployments share a cluster"""
    partitions: int = Field(default=6, ge=1)
    """partitions of every topic without a fixed count (co-partitioned topics need the same)"""
    partitions_per_topic: dict[str, int] = Field(default_factory=dict)
    """partition counts by full topic name, overriding `partitions` (JSON)"""
    replication_factor: int = Field(default=1, ge=1)
    """replicas of every topic created (1 on the embedded broker)"""

    # --- payloads and schemas -----------------------------------------------------
    content_store_url: str = "file://.onceflow/content"
    """where payloads and results live: file://DIR or s3://BUCKET/PREFIX"""
    content_store_fsync: bool | None = Field(
        default=None,
        description="fsync local content before a fact points at it; default: on for a real "
                    "cluster, off for the embedded broker (which leaves its own log to the page "
                    "cache too: a process crash loses neither, a power cut both)",
    )
    api_token: str | None = None
    """a bearer token the HTTP API asks every request for (unset: none)"""
    views_url: str | None = None
    """where the views service (its HTTP API, the ksql routes, the dashboard) is, for the CLI and the client (unset: what `onceflow up` recorded)"""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """serve this role's Prometheus metrics at /metrics on this port (0: any free port, written beside the role's ready file; `onceflow up` uses 0)"""
    metrics_interval_ms: int = Field(default=5000, ge=100)
    """how often a role with metrics reports its consumer lag and state size"""
    s3_endpoint_url: str | None = None
    """an S3-compatible endpoint (MinIO, moto); unset for AWS"""
    s3_region: str | None = None
    """the S3 region"""

    # --- processes --------------------------------------------------------------------
    state_dir: Path = Path(".onceflow/state")
    """where roles keep their RocksDB state and checkpoints"""
    stack_dir: Path = Path(".onceflow")
    """the local stack's directory: Kafka's data, role state, logs, stack.json"""
    embedded_kafka_heap_mb: int = Field(
        default=512, ge=128,
        description="the embedded Kafka broker's JVM heap (`onceflow up`, the tests, the bench)",
    )
    members: dict[str, int] = Field(
        default_factory=dict,
        description="members `onceflow up` starts per role (scheduler, billing, trust, "
                    "limiter, views), e.g. {\"scheduler\": 3}; a role not named runs one "
                    "(the limiter runs beside each scheduler besides)",
    )
    batch_size: int = Field(default=2000, ge=1)
    """records the batched shell reads at most per batch"""
    batch_timeout_ms: int = Field(default=50, ge=1)
    """how long the batched shell waits for a first record when none is ready"""
    checkpoint_interval_ms: int = Field(
        default=100, ge=0,
        description="how often the batched shell waits for its outputs and writes state "
                    "and offsets, without transactions (0: after every batch)",
    )
    transaction_max_ms: int = Field(
        default=500, ge=0,
        description="under transactions, the longest a transaction stays open while a "
                    "batch is decided: a longer batch is committed in parts, so what it "
                    "decided first (grants, dispatches) is visible while the rest is "
                    "decided (0: one transaction per batch); each commit costs a few "
                    "round trips, see bench/ for the figures",
    )
    max_event_bytes: int = Field(
        default=512 * 1024, ge=1024,
        description="the largest record a role decides on; a larger one is dead-lettered "
                    "(payloads belong in the content store, events carry their reference)",
    )
    retention_horizon_ms: int = Field(
        default=7 * 24 * 3600 * 1000, ge=0,
        description="how long, in logged time, a role keeps a settled unit's working state "
                    "and an input's dedupe mark after it settled or was decided (a week; its "
                    "facts stay in the log for good); 0: keep them for ever",
    )
    dedupe_min_marks: int = Field(
        default=100_000, ge=0,
        description="dedupe marks are also kept until this many later inputs were decided, "
                    "so that a clock that jumps a horizon ahead cannot drop the marks of "
                    "inputs a crash delivers again",
    )

    # --- roles ----------------------------------------------------------------------------
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)

    # --- logging -------------------------------------------------------------------------
    log_format: LogFormat = "auto"
    """auto (console on a terminal, else JSON), console or json"""
    log_level: str = "INFO"
    """log level of roles (commands print warnings only unless this is set lower)"""

    def faust_broker_settings(self) -> dict[str, Any]:
        """Keyword arguments for `faust.App` that depend on the broker."""
        kw: dict[str, Any] = {
            "broker": ";".join(f"kafka://{s.strip()}" for s in self.bootstrap_servers.split(",")),
            "processing_guarantee": "at_least_once",
            "topic_replication_factor": self.replication_factor,
            "topic_partitions": self.partitions,
        }
        if self.broker_profile == "embedded":
            kw.update({"broker_session_timeout": 6.0, "broker_heartbeat_interval": 1.0})
        return kw

    def member_state_roots(self, state_dir: Path | None = None) -> list[tuple[str, Path]]:
        """Every place a partition's state may be kept under `state_dir` (default: the
        settings'): the directory itself ("" for a process with no member name) and
        each member's (`members/<name>`), as (member, path), in name order."""
        root = Path(state_dir or self.state_dir)
        members = root / "members"
        named = sorted(d for d in members.iterdir() if d.is_dir()) if members.is_dir() else []
        return [("", root), *((d.name, d) for d in named)]

    def member_state_dir(self) -> Path:
        """Where this member keeps its partitions' state: its own directory when it is
        named (members on one host never share a partition's RocksDB, so a frozen one
        cannot hold a lock the new owner waits for), else `state_dir` itself."""
        return self.state_dir / "members" / self.member if self.member else self.state_dir

    def topic_partitions(self, topic: str, default: int | None = None) -> int:
        return self.partitions_per_topic.get(topic, default or self.partitions)

    def to_env(self) -> dict[str, str]:
        """These settings as `ONCEFLOW_*` variables, for the role processes `up` starts."""
        env: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, BaseModel):
                data = value.model_dump(mode="json")
                for k in list(data):
                    secret = getattr(value, k)
                    if isinstance(secret, SecretStr):
                        data[k] = secret.get_secret_value()
                text = json.dumps(data)
            elif isinstance(value, dict | list):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"ONCEFLOW_{name.upper()}"] = text
        return env

    def stack_file(self) -> Path:
        return self.stack_dir / STACK_FILE

    # --- what the roles here ask of the groups above (the composition answers) ------------

    @property
    def prepaid_credits(self) -> Mapping[str, Decimal]:
        """Each prepaid tenant's credit (billing's group): what the scheduler and the
        limiter hold budgets against. None here: the roles above add their groups."""
        return {}

    @property
    def default_llm_provider(self) -> str:
        """The provider LLM units call unless they name one (the agents' group)."""
        return "stub"


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Settings from the environment; the local stack's broker if it is up and none is set.

    `onceflow up` records the embedded broker's address in `.onceflow/stack.json`
    so that later commands in the same checkout find it without flags. `cls`: the
    settings of the process (`onceflow.settings.load_settings` gives them all).
    """
    settings = cls(**overrides)
    if "ONCEFLOW_BOOTSTRAP_SERVERS" not in os.environ and "bootstrap_servers" not in overrides:
        stack = settings.stack_file()
        if stack.exists():
            try:
                data = json.loads(stack.read_text())
                settings = settings.model_copy(update={"bootstrap_servers": data["bootstrap"]})
            except (ValueError, KeyError):
                pass
    return settings
