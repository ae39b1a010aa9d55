"""Deployment on a Kubernetes cluster with Strimzi-managed Kafka: the manifests beside this
module (`kustomization.yaml`), and the topics generated from the topic catalog."""

from onceflow.infra.deploy.topics import kafka_topics, topics_yaml

__all__ = ["kafka_topics", "topics_yaml"]
