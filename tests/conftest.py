"""One embedded broker per pytest session; unique topics and group ids per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from streams.settings import OnceflowSettings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    b = EmbeddedBroker(log_path=log).start()
    yield b
    b.stop()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path, uid: str) -> OnceflowSettings:
    """Settings pointing at the session broker, with a per-test topic prefix and state dir."""
    return OnceflowSettings(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uid}.",
        partitions=3,
        state_dir=tmp_path / "state",
        stack_dir=tmp_path / "stack",
        content_store_url=f"file://{tmp_path / 'content'}",
        read_to_end_idle_ms=300,
        log_format="json",
    )


@pytest.fixture
def subprocess_env(settings: OnceflowSettings) -> dict[str, str]:
    return {
        **os.environ,
        "ONCEFLOW_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ONCEFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "ONCEFLOW_PARTITIONS": str(settings.partitions),
        "ONCEFLOW_LOG_FORMAT": "json",
        "ONCEFLOW_READ_TO_END_IDLE_MS": str(settings.read_to_end_idle_ms),
    }
