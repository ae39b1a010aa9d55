"""The embedded Kafka broker's own files: what it runs, with which settings, and when it cannot."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from onceflow.infra import broker as broker_module
from onceflow.infra.broker import KAFKA_VERSION, EmbeddedKafka, JavaMissingError, java_binary

POM = Path(broker_module.__file__).resolve().parent / "kafka" / "pom.xml"


def test_the_pom_pins_the_broker_the_code_names() -> None:
    pom = POM.read_text()
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    # Kafka's pom brings slf4j 1.x and log4j2 but no binding: the broker would be silent.
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom
    plugin = re.search(r"maven-dependency-plugin</artifactId>\s*<!--.*?-->\s*<version>([\d.]+)<",
                       pom, re.S)
    assert plugin is not None and plugin.group(1).startswith("3.")


def test_one_node_settings(tmp_path: Path) -> None:
    kafka = EmbeddedKafka(data_dir=tmp_path, port=19092, controller_port=19093)
    conf = kafka.server_properties()
    assert conf["process.roles"] == "broker,controller"
    assert conf["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert conf["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert conf["log.dirs"] == str((tmp_path / "logs").resolve())
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert conf[key] == "1", key
    assert conf["group.initial.rebalance.delay.ms"] == "0"
    assert int(conf["log.cleaner.dedupe.buffer.size"]) <= 16 * 1024 * 1024
    assert conf["log.cleaner.enable"] == "true"


def test_ports_are_kept_for_the_next_start(tmp_path: Path) -> None:
    first = EmbeddedKafka(data_dir=tmp_path)
    first._choose_ports()
    second = EmbeddedKafka(data_dir=tmp_path)
    second._choose_ports()
    assert (second.port, second.controller_port) == (first.port, first.controller_port)
    assert first.port != first.controller_port


def test_cluster_id_is_22_url_safe_characters_never_led_by_a_dash() -> None:
    # One id in 64 would start with "-", which the storage tool reads as an option.
    ids = {broker_module._cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def _fake_java(tmp_path: Path, version_line: str) -> Path:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return home


def test_a_too_old_java_is_a_one_line_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, 'openjdk version "11.0.2"')))
    with pytest.raises(JavaMissingError) as err:
        java_binary()
    message = str(err.value)
    assert "\n" not in message
    assert "Java 11" in message and "17 or newer" in message


def test_java_8_is_read_as_8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, 'java version "1.8.0_392"')))
    with pytest.raises(JavaMissingError, match="Java 8"):
        java_binary()


def test_no_java_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissingError, match="JDK 17") as err:
        java_binary()
    assert "ONCEFLOW_BOOTSTRAP_SERVERS" in str(err.value)


def test_a_new_enough_java_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_java(tmp_path, 'openjdk version "21.0.1" 2023-10-17')
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert java_binary() == str(home / "bin" / "java")
