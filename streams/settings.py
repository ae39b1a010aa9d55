"""Settings for every onceflow process (pydantic-settings, prefix `ONCEFLOW_`).

The embedded Kafka broker gets Kafka's defaults plus short group timeouts and
fetch waits, behind `broker_profile`, so that pointing onceflow at a real
cluster is a matter of environment variables, never code.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AgentSettings",
    "AutoscalerSettings",
    "BillingSettings",
    "BrokerProfile",
    "LogFormat",
    "ModelPrice",
    "OnceflowSettings",
    "SchedulerSettings",
    "TrustSettings",
    "configuration_reference",
    "load_settings",
]

BrokerProfile = Literal["embedded", "cluster"]
LogFormat = Literal["auto", "console", "json"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

STACK_FILE = "stack.json"


class _Documented(BaseModel):
    """A settings group whose fields are documented by the string below each one
    (what `docs/configuration.md` is generated from)."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class SchedulerSettings(_Documented):
    """The scheduler's constants (Krako 2.0's numbers as defaults)."""

    weight_capacity: float = 0.35
    """placement score weight of a node's free capacity"""
    weight_load: float = 0.30
    """placement score weight of a node's idleness (1 - utilization)"""
    weight_trust: float = 0.25
    """placement score weight of a node's trust score"""
    weight_region: float = 0.10
    """placement score weight of a region match"""
    default_trust: float = 0.5
    """trust of a node no score has been published for"""
    stale_heartbeat_ms: int = Field(default=60_000, ge=1, description="older: trust halved")
    node_expiry_ms: int = Field(
        default=180_000, ge=1,
        description="a node silent this long is filtered out (heartbeat_expired)",
    )
    anti_affinity_streak: int = 5
    """wins in a row after which a near-tie goes to the runner-up"""
    anti_affinity_margin: float = 0.03
    """how close the runner-up's score must be for anti-affinity to apply"""
    throttled_admits: list[str] = Field(default_factory=lambda: ["critical", "p0", "p1"])
    """priorities THROTTLED mode still admits; the rest are deferred"""
    critical_admits: list[str] = Field(
        default_factory=lambda: ["critical", "p0", "p1"],
        description="priorities CRITICAL mode still admits; set to [critical, p0] to reject p1",
    )
    claim_timeout_ms: int = Field(default=10_000, ge=1,
                                  description="a dispatch nobody claimed in time is re-placed")
    retry_base_ms: int = 500
    """the first retry's backoff; it doubles with every failure"""
    retry_cap_ms: int = 30_000
    """the longest retry backoff"""
    retry_jitter_ratio: float = 0.2
    """deterministic jitter added to a backoff, as a share of it"""
    retryable_errors: list[str] = Field(
        default_factory=lambda: ["network_transient", "node_timeout", "admission_reject"]
    )
    """error codes a failed attempt is retried for (others fail the unit)"""
    tick_interval_ms: int = Field(default=200, ge=10)
    """how often the scheduler's clock ticks (leases, retries and deferrals are checked on ticks)"""
    queue_sample_ms: int = Field(default=1000, ge=10,
                                 description="how often (logged time) each partition samples "
                                             "its queue for the autoscaler")
    deferred_per_tick: int = Field(default=500, ge=1)
    """units a tick looks at again at most (due leases, retries, deferred units)"""


class AgentSettings(_Documented):
    """Node agent defaults; `onceflow worker agent` flags override them."""

    heartbeat_interval_ms: int = Field(default=500, ge=10)
    """how often a node agent heartbeats its load and health"""
    lease_safety_ms: int = Field(
        default=500, ge=0, description="no world-changing action starts this close to a lease end"
    )
    queue_limit: int = Field(default=1024, ge=0,
                             description="dispatches a node accepts beyond its running ones, "
                                         "at most")
    queue_horizon_s: float = Field(
        default=2.0, gt=0,
        description="a node asks for as much queued work as it finished in this many seconds "
                    "(at least twice its concurrency), so long units do not wait out their "
                    "leases in its queue",
    )
    handler_modules: list[str] = Field(default_factory=list,
                                       description="modules imported to register handlers")
    drain_timeout_s: float = Field(default=120.0, gt=0,
                                   description="a draining agent stops after this even if "
                                               "claimed work is still outstanding")
    llm_provider: Literal["stub", "openai"] = "stub"
    """stub (deterministic, offline) or openai (any OpenAI-compatible server)"""
    llm_base_url: str | None = None
    """the OpenAI-compatible server's URL"""
    llm_api_key: SecretStr | None = None
    """the OpenAI-compatible server's API key"""
    llm_model: str = "gpt-4o-mini"
    """the model used when a unit names none"""
    llm_timeout_s: float = 30.0
    """how long one LLM call may take"""
    llm_usd_per_1k_tokens: str = "0.002000"
    """the provider's estimated cost per 1K tokens, reported on invocations (billing prices from the price book)"""


class TrustSettings(_Documented):
    """The trust model: Beta-Binomial reliability, timeout and health penalties, decay; every constant is a setting."""

    prior_alpha: float = Field(default=2.0, gt=0)
    """Beta-Binomial prior successes of a new node"""
    prior_beta: float = Field(default=2.0, gt=0)
    """Beta-Binomial prior failures of a new node"""
    timeout_lambda: float = Field(default=0.2, gt=0, le=1, description="EWMA weight of a new "
                                                                        "observation")
    timeout_cap: float = Field(default=0.4, ge=0, le=1)
    """the largest penalty lease timeouts can add up to"""
    health_penalties: dict[str, float] = Field(default_factory=lambda: {
        "healthy": 0.0, "degraded": 0.2, "down": 0.5, "draining": 0.0})
    """penalty by heartbeat health state (JSON)"""
    decay_per_hour: float = Field(default=0.98, gt=0, le=1,
                                  description="how much of the evidence is kept per hour of "
                                              "logged time (toward the prior)")
    quarantine_below: float = Field(default=0.35, ge=0, le=1,
                                    description="a node scoring below this is not scheduled")
    release_above: float = Field(default=0.45, ge=0, le=1,
                                 description="a quarantined node is released above this")
    min_change: float = Field(default=0.001, ge=0,
                              description="heartbeats only emit an update when the score moved "
                                          "this much (outcomes always do)")


class AutoscalerSettings(_Documented):
    """The capacity controller's windows, thresholds, cooldowns and bounds (Krako 2.0's)."""

    window_ms: int = Field(default=5000, ge=10, description="fixed windows of logged time")
    scale_up_queue: int = 200
    """a window with more queued work than this counts toward scaling up"""
    scale_up_wait_p95_ms: float = 2000.0
    """or with a submit-to-grant wait p95 above this"""
    scale_up_utilization: float = 0.80
    """or with node utilization above this"""
    scale_up_windows: int = Field(default=3, ge=1)
    """windows in a row that scale up by one replica"""
    scale_up_cooldown_ms: int = Field(default=60_000, ge=0)
    """logged time between two scale-ups"""
    max_replicas: int = Field(default=20, ge=1)
    """the most node agents the controller asks for"""
    scale_down_queue: int = 40
    """a window with less queued work than this (and low wait and utilization) counts toward scaling down"""
    scale_down_wait_p95_ms: float = 1000.0
    """and a submit-to-grant wait p95 below this"""
    scale_down_utilization: float = 0.45
    """and node utilization below this"""
    scale_down_windows: int = Field(default=6, ge=1)
    """windows in a row that scale down by one replica"""
    scale_down_cooldown_ms: int = Field(default=180_000, ge=0)
    """logged time between two scale-downs"""
    min_replicas: int = Field(default=1, ge=0)
    """the fewest node agents the controller asks for"""
    throttle_queue: int = 900
    """queued work at which admission turns THROTTLED"""
    critical_queue: int = 1000
    """queued work at which admission turns CRITICAL (after critical_windows)"""
    critical_windows: int = Field(default=3, ge=1)
    """windows in a row at critical_queue that turn admission CRITICAL"""
    open_queue: int = 500
    """queued work below which admission opens again (after open_windows)"""
    open_windows: int = Field(default=6, ge=1)
    """windows in a row below open_queue that reopen admission"""
    initial_replicas: int | None = Field(
        default=None, description="replicas before the first window (default: the nodes seen)")


class ModelPrice(BaseModel):
    """USD per 1K tokens for one model, input and output priced apart."""

    input_usd_per_1k: Decimal = Field(ge=0)
    output_usd_per_1k: Decimal = Field(ge=0)


class BillingSettings(_Documented):
    """The price book, the double-charging switches, prepaid credit and anomaly thresholds.

    Defaults are Krako 2.0's prices. A price book file (JSON, see
    `billing.load_price_book`) replaces the prices and their version.
    """

    price_book_file: Path | None = None
    """a JSON price book replacing the prices below and their version"""
    pricing_version: str = "default-2026-11"
    """the version line items record their prices under"""
    cpu_usd_per_second: Decimal = Field(default=Decimal("0.000500"), ge=0)
    """USD per CPU second of a settled unit"""
    default_model: ModelPrice = Field(default_factory=lambda: ModelPrice(
        input_usd_per_1k=Decimal("0.002000"), output_usd_per_1k=Decimal("0.002000")))
    """input and output USD per 1K tokens of a model the price book does not name (JSON)"""
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    """input and output USD per 1K tokens per model (JSON)"""
    bill_llm_from_invocation: bool = Field(
        default=True, description="charge LLM tokens from llm.invocation.completed (safe)")
    bill_llm_from_completion: bool = Field(
        default=False, description="charge LLM tokens from the completion's llm_tokens instead")
    prepaid_credits: dict[str, Decimal] = Field(
        default_factory=dict,
        description="tenant -> prepaid USD; such a tenant's new work is rejected with "
                    "BUDGET_EXCEEDED once its balance would go below zero")
    views_dedupe_window: int = Field(
        default=200_000, ge=1,
        description="line item ids the views remember to drop a second copy of one "
                    "(about 120 bytes each)",
    )
    cost_spike_factor: float = Field(
        default=10.0, gt=1, description="a session costing this many times its tenant's "
                                        "median session is flagged")
    cost_spike_min_sessions: int = Field(
        default=5, ge=1, description="sessions a tenant needs before spikes are judged")

    @model_validator(mode="after")
    def _one_source_for_tokens(self) -> BillingSettings:
        if self.bill_llm_from_invocation and self.bill_llm_from_completion:
            raise ValueError(
                "bill_llm_from_invocation and bill_llm_from_completion are both on, which "
                "would charge the same tokens twice; turn one off "
                "(ONCEFLOW_BILLING__BILL_LLM_FROM_COMPLETION=false is the safe default)")
        return self


class OnceflowSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ONCEFLOW_", env_nested_delimiter="__", extra="ignore",
        use_attribute_docstrings=True,
    )

    # --- Kafka ---------------------------------------------------------------
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
    s3_endpoint_url: str | None = None
    """an S3-compatible endpoint (MinIO, moto); unset for AWS"""
    s3_region: str | None = None
    """the S3 region"""
    schema_registry_url: str | None = None
    """a Confluent schema registry: events use its wire format instead of single-object encoding"""

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
    processor_linger_ms: int = Field(
        default=1, ge=0,
        description="linger.ms of the batched shell's producer: a batch's facts go out in "
                    "few record batches; see bench/ for the figures",
    )
    checkpoint_interval_ms: int = Field(
        default=100, ge=0,
        description="how often the batched shell waits for its outputs and writes state "
                    "and offsets (0: after every batch)",
    )

    # --- roles ----------------------------------------------------------------------------
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)

    # --- logging -------------------------------------------------------------------------
    log_format: LogFormat = "auto"
    """auto (console on a terminal, else JSON), console or json"""
    log_level: str = "INFO"
    """log level of roles (commands print warnings only unless this is set lower)"""

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
        }
        if group_id is not None:
            conf["group.id"] = group_id
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
    import os

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


def configuration_reference() -> str:
    """Every `ONCEFLOW_*` variable with its default and meaning, as Markdown: what
    `docs/configuration.md` holds (a test keeps the two equal)."""
    groups: list[tuple[str, str, type[BaseModel]]] = [("", "", OnceflowSettings)]
    out = [
        "# Configuration",
        "",
        "Every setting is an environment variable with the prefix `ONCEFLOW_`; a group's",
        "settings take the group's name and a double underscore (`ONCEFLOW_SCHEDULER__...`).",
        "Lists and maps are JSON. Generated from `streams/settings.py` by",
        "`python -m onceflow.streams.settings > docs/configuration.md`; do not edit by hand.",
    ]
    for name, field in OnceflowSettings.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            groups.append((f"{name.upper()}__", (ann.__doc__ or "").split("\n")[0], ann))
    for prefix, doc, model in groups:
        out += ["", f"## {'ONCEFLOW_' + prefix + '*' if prefix else 'General'}", ""]
        if doc:
            out += [doc, ""]
        out += ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            ann = field.annotation
            if model is OnceflowSettings and isinstance(ann, type) and issubclass(ann, BaseModel):
                continue
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            out.append(f"| `ONCEFLOW_{prefix}{name.upper()}` | {_shown_default(field)} | "
                       f"{meaning} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(configuration_reference(), end="")
