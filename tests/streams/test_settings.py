from __future__ import annotations

import pytest

from streams.settings import OnceflowSettings
from streams.topics.catalog import TopicCatalog, partition_for


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


def test_embedded_profile_sets_broker_workarounds() -> None:
    s = OnceflowSettings()
    assert s.consumer_config("g")["session.timeout.ms"] == 6000
    faust_kw = s.faust_broker_settings()
    assert faust_kw["producer_enable_idempotence"] is False
    assert faust_kw["producer_max_batch_size"] == 1
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
