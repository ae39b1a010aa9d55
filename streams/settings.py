"""The settings of every onceflow process, composed (pydantic-settings, prefix `ONCEFLOW_`).

Each part lives with what it configures: the Kafka client settings with the
Kafka layer (`streams/kafka/settings.py`, flat variables), each role's group
with the role (`streams/scheduler/settings.py`, `agents/settings.py`,
`billing/settings.py`, `streams/trust/settings.py`, `autoscaler/settings.py`,
as `ONCEFLOW_<ROLE>__*`). This module composes them and generates the
reference (`docs/configuration.md`) from their field docs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from onceflow.agents.settings import AgentSettings
from onceflow.autoscaler.settings import AutoscalerSettings
from onceflow.billing.settings import BillingSettings, ModelPrice
from onceflow.streams.kafka.settings import BrokerProfile, KafkaSettings, SecurityProtocol
from onceflow.streams.limits.settings import LimitsSettings
from onceflow.streams.scheduler.settings import SchedulerSettings
from onceflow.streams.trust.settings import TrustSettings

__all__ = [
    "AgentSettings",
    "AutoscalerSettings",
    "BillingSettings",
    "BrokerProfile",
    "KafkaSettings",
    "LimitsSettings",
    "LogFormat",
    "ModelPrice",
    "OnceflowSettings",
    "SchedulerSettings",
    "SecurityProtocol",
    "TrustSettings",
    "configuration_reference",
    "load_settings",
]

LogFormat = Literal["auto", "console", "json"]

STACK_FILE = "stack.json"


class OnceflowSettings(KafkaSettings):
    """Everything a onceflow process is configured with: Kafka, topics, payloads, the
    processes' shell, and one group per role."""

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
    batch_size: int = Field(default=2000, ge=1)
    """records the batched shell reads at most per batch"""
    batch_timeout_ms: int = Field(default=50, ge=1)
    """how long the batched shell waits for a first record when none is ready"""
    checkpoint_interval_ms: int = Field(
        default=100, ge=0,
        description="how often the batched shell waits for its outputs and writes state "
                    "and offsets (0: after every batch)",
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
    agent: AgentSettings = Field(default_factory=AgentSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
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


def load_settings(**overrides: Any) -> OnceflowSettings:
    """Settings from the environment; the local stack's broker if it is up and none is set.

    `onceflow up` records the embedded broker's address in `.onceflow/stack.json`
    so that later commands in the same checkout find it without flags.
    """
    settings = OnceflowSettings(**overrides)
    if "ONCEFLOW_BOOTSTRAP_SERVERS" not in os.environ and "bootstrap_servers" not in overrides:
        stack = settings.stack_file()
        if stack.exists():
            try:
                data = json.loads(stack.read_text())
                settings = settings.model_copy(update={"bootstrap_servers": data["bootstrap"]})
            except (ValueError, KeyError):
                pass
    return settings


def _shown_default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "(unset)"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, default=str) + "`"
    return f"`{value}`"


def _defined_in(model: type[BaseModel]) -> str:
    """The repository path of the module that defines a settings class."""
    module = __spec__.name if model.__module__ == "__main__" and __spec__ else model.__module__
    parts = module.split(".")[1:]  # without the `onceflow.` import name
    return "/".join(parts) + ".py"


def configuration_reference() -> str:
    """Every `ONCEFLOW_*` variable with its default and meaning, as Markdown: what
    `docs/configuration.md` holds (a test keeps the two equal)."""
    kafka_fields = set(KafkaSettings.model_fields)
    sections: list[tuple[str, str, str, type[BaseModel], list[str]]] = [
        ("Kafka", "", (KafkaSettings.__doc__ or "").split("\n")[0], KafkaSettings,
         [n for n in OnceflowSettings.model_fields if n in kafka_fields]),
        ("General", "", "", OnceflowSettings,
         [n for n, f in OnceflowSettings.model_fields.items() if n not in kafka_fields
          and not _is_group(f.annotation)]),
    ]
    for name, field in OnceflowSettings.model_fields.items():
        ann = field.annotation
        if _is_group(ann):
            assert isinstance(ann, type)
            sections.append((f"ONCEFLOW_{name.upper()}__*", f"{name.upper()}__",
                             (ann.__doc__ or "").split("\n")[0], ann, list(ann.model_fields)))
    out = [
        "# Configuration",
        "",
        "Every setting is an environment variable with the prefix `ONCEFLOW_`; a group's",
        "settings take the group's name and a double underscore (`ONCEFLOW_SCHEDULER__...`).",
        "Lists and maps are JSON. Each group is defined beside what it configures (the module",
        "named under its heading); this page is generated from them by",
        "`python -m onceflow.streams.settings > docs/configuration.md`; do not edit by hand.",
    ]
    for title, prefix, doc, model, names in sections:
        out += ["", f"## {title}", "", f"Defined in `{_defined_in(model)}`.", ""]
        if doc:
            out += [doc, ""]
        out += ["| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            field = model.model_fields[name]
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            out.append(f"| `ONCEFLOW_{prefix}{name.upper()}` | {_shown_default(field)} | "
                       f"{meaning} |")
    return "\n".join(out) + "\n"


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


if __name__ == "__main__":
    print(configuration_reference(), end="")
