"""The deployment in infra/deploy, checked offline: the manifests parse, the Kubernetes
resources match the Kubernetes API schemas, the settings they give are onceflow's, the
commands are its roles, and the topics are the catalog's (and what the embedded Kafka gets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from onceflow.infra.deploy import kafka_topics, topics_yaml
from onceflow.settings import OnceflowSettings
from onceflow.streams.topics import create_topics
from onceflow.streams.topics.provisioning import describe_topics

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy"
#: the Kubernetes release the manifests are checked against
K8S = "1.33.0"
#: the Strimzi resources, and the fields of theirs the deployment relies on (Strimzi's own
#: CRD schemas are not available offline; these are checked field by field)
STRIMZI_REQUIRED: dict[str, list[str]] = {
    "Kafka": ["spec.kafka.listeners", "spec.entityOperator.topicOperator"],
    "KafkaNodePool": ["spec.replicas", "spec.roles", "spec.storage"],
    "KafkaTopic": ["spec.topicName", "spec.partitions", "spec.replicas", "spec.config"],
    "KafkaUser": ["spec.authentication.type"],
}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


def _get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value[part]
    return value


def test_every_kubernetes_resource_matches_the_api_schema() -> None:
    docs = documents()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret",
            "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
            for path in STRIMZI_REQUIRED[doc["kind"]]:
                _get(doc, path)
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_kafka_cluster_runs_in_kraft_mode_with_scram_over_tls() -> None:
    (kafka,) = [d for d in documents() if d["kind"] == "Kafka"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
    (pool,) = [d for d in documents() if d["kind"] == "KafkaNodePool"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}


def test_the_roles_run_onceflow_commands_with_onceflow_settings() -> None:
    from typer.main import get_command

    from onceflow.infra.cli.workers import worker_app

    docs = documents()
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    settings = OnceflowSettings(**{k.removeprefix("ONCEFLOW_").lower(): v
                                   for k, v in config["data"].items()})
    assert settings.security_protocol == "SASL_SSL" and settings.partitions == 12
    roles = set(get_command(worker_app).commands)  # type: ignore[attr-defined]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"
                   and d["metadata"]["name"] != "minio"}
    assert set(deployments) == {"scheduler", "billing", "trust", "autoscaler", "views",
                                "agent"}
    for name, d in deployments.items():
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == "worker" and container["args"][1] in roles, name
        assert container["readinessProbe"] and container["livenessProbe"], name
        assert container["resources"]["requests"], name
        # no role runs more replicas than its topics have partitions to share
        assert d["spec"]["replicas"] <= settings.partitions, name
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "agent"


def test_the_topics_file_is_the_catalog_as_generated() -> None:
    production = OnceflowSettings(partitions=12, replication_factor=3)
    assert (DEPLOY / "topics.yaml").read_text() == topics_yaml(production), (
        "regenerate it: ONCEFLOW_PARTITIONS=12 ONCEFLOW_REPLICATION_FACTOR=3 onceflow topics "
        "manifest > infra/deploy/topics.yaml")


@pytest.mark.integration
def test_the_generated_topics_are_what_the_embedded_kafka_is_given(
        settings: OnceflowSettings) -> None:
    create_topics(settings)
    live = {s.name: s for s in describe_topics(settings)}
    for topic in kafka_topics(settings):
        spec = topic["spec"]
        found = live[spec["topicName"]]
        assert found.exists and found.partitions == spec["partitions"], spec["topicName"]
        for key, value in spec["config"].items():
            assert found.configs.get(key) == value, (spec["topicName"], key)
