from __future__ import annotations

import pytest

from onceflow.settings import OnceflowSettings
from onceflow.streams.topics.catalog import TopicCatalog, partition_for


def test_security_settings_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ONCEFLOW_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("ONCEFLOW_SASL_USERNAME", "svc")
    monkeypatch.setenv("ONCEFLOW_SASL_PASSWORD", "secret")
    monkeypatch.setenv("ONCEFLOW_SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("ONCEFLOW_KAFKA_EXTRA", '{"client.rack": "eu-west-1a"}')
    monkeypatch.setenv("ONCEFLOW_BROKER_PROFILE", "cluster")
    conf = OnceflowSettings().consumer_config("g")
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.password"] == "secret"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["client.rack"] == "eu-west-1a"
    assert "session.timeout.ms" not in conf  # cluster profile keeps Kafka's defaults


def test_embedded_profile_is_kafka_defaults_with_fast_groups() -> None:
    s = OnceflowSettings()
    conf = s.consumer_config("g")
    assert conf["session.timeout.ms"] == 6000
    assert conf["fetch.wait.max.ms"] == s.embedded_fetch_wait_ms
    faust_kw = s.faust_broker_settings()
    # No workaround for a broker that gets idempotence or watermarks wrong.
    assert "producer_enable_idempotence" not in faust_kw
    assert "producer_max_batch_size" not in faust_kw
    assert faust_kw["broker_session_timeout"] == 6.0
    assert faust_kw["processing_guarantee"] == "at_least_once"
    producer = s.producer_config()
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"


def test_catalog_covers_every_family_and_partitions_by_entity() -> None:
    catalog = TopicCatalog(OnceflowSettings(partitions=6))
    roles = {t.role for t in catalog}
    assert {"submissions", "workunits", "dispatch", "llm", "nodes", "trust", "capacity",
            "ledger", "wallets", "anomalies", "control", "deadletters"} <= roles
    assert catalog["capacity"].partitions == 1
    assert catalog["nodes"].cleanup_policy == "compact"
    wu = catalog["workunits"]
    assert wu.key == "event_id" and wu.partition_by == "work_unit_id"
    assert wu.partition_of("wu-1") == partition_for("wu-1", 6)
    spread = {partition_for(f"wu-{i}", 6) for i in range(100)}
    assert spread == set(range(6))


def test_the_configuration_reference_is_current() -> None:
    from pathlib import Path

    from onceflow.settings import configuration_reference

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == configuration_reference(), (
        "docs/configuration.md is stale: run "
        "`python -m onceflow.settings > docs/configuration.md`")


def test_every_setting_says_what_it_means() -> None:
    from pydantic import BaseModel

    def undocumented(model: type[BaseModel], prefix: str) -> list[str]:
        out: list[str] = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if model is OnceflowSettings and isinstance(ann, type) and issubclass(ann, BaseModel):
                out += undocumented(ann, f"{prefix}{name.upper()}__")
            elif not field.description:
                out.append(f"{prefix}{name.upper()}")
        return out

    assert undocumented(OnceflowSettings, "ONCEFLOW_") == []


def test_each_settings_group_lives_beside_what_it_configures() -> None:
    from onceflow.agents.settings import AgentSettings
    from onceflow.autoscaler.settings import AutoscalerSettings
    from onceflow.billing.settings import BillingSettings
    from onceflow.settings import OnceflowSettings
    from onceflow.streams.kafka.settings import KafkaSettings
    from onceflow.streams.scheduler.settings import SchedulerSettings
    from onceflow.streams.trust.settings import TrustSettings

    groups = {name: field.annotation for name, field in OnceflowSettings.model_fields.items()
              if name in ("scheduler", "agent", "billing", "trust", "autoscaler")}
    assert groups == {"scheduler": SchedulerSettings, "agent": AgentSettings,
                      "billing": BillingSettings, "trust": TrustSettings,
                      "autoscaler": AutoscalerSettings}
    # the Kafka client settings and the configs built from them are the Kafka layer's
    assert issubclass(OnceflowSettings, KafkaSettings)
    assert OnceflowSettings.consumer_config is KafkaSettings.consumer_config
    assert "bootstrap_servers" in KafkaSettings.model_fields
    assert "scheduler" not in KafkaSettings.model_fields
