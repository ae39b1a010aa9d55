"""One embedded Kafka broker per pytest session; unique topics and group ids per test.

Each test's topics are deleted when it ends, so that a session's broker holds
the partitions of the tests running now, not of every test that ran before.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from onceflow.infra.broker import EmbeddedKafka
from onceflow.settings import OnceflowSettings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    b = EmbeddedKafka(data_dir=tmp_path_factory.mktemp("kafka")).start()
    yield b
    b.stop()


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with `prefix` (a test's own)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the item (`item.rep_call`), so a fixture's teardown
    can tell a failed test from a passed one (and say more about what failed)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(broker: EmbeddedKafka, tmp_path: Path, uid: str) -> Iterator[OnceflowSettings]:
    """Settings pointing at the session broker, with a per-test topic prefix and state dir."""
    yield OnceflowSettings(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uid}.",
        partitions=3,
        state_dir=tmp_path / "state",
        stack_dir=tmp_path / "stack",
        content_store_url=f"file://{tmp_path / 'content'}",
        log_format="json",
    )
    if broker.process is not None:
        delete_topics(broker.bootstrap, f"t{uid}.")


@pytest.fixture
def subprocess_env(settings: OnceflowSettings) -> dict[str, str]:
    return {
        **os.environ,
        "ONCEFLOW_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ONCEFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "ONCEFLOW_PARTITIONS": str(settings.partitions),
        "ONCEFLOW_LOG_FORMAT": "json",
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    # Only the controller (or a run without workers) clears the simulation's figures.
    if not hasattr(session.config, "workerinput"):
        import shutil

        from tests.simulation.fixtures import REPORT_DIR

        shutil.rmtree(REPORT_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.simulation.fixtures import summarise_reports

    line = summarise_reports()
    if line is not None:
        terminalreporter.write_line(line)
