"""The Python client against a live stack: the examples in docs/client.md run as written,
and a result awaited from Python is the bytes the content store holds for it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceflow import Client, Step, UnitFailed
from onceflow.infra.broker import free_port
from onceflow.infra.client import ContentIntegrityError
from onceflow.infra.roles import agent_specs, start_roles, stop_roles
from onceflow.schemas import WorkUnitCompleted
from onceflow.settings import OnceflowSettings
from onceflow.streams.content import open_content_store
from onceflow.streams.limits import LimitsSettings
from onceflow.streams.topics import create_topics
from tests.agents.fixtures import fast_settings
from tests.fixtures import events

pytestmark = [pytest.mark.integration]

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def stack(settings: OnceflowSettings) -> Iterator[tuple[OnceflowSettings, dict[str, str]]]:
    fast = fast_settings(settings).model_copy(update={"limits": LimitsSettings(
        session_budgets=True)})
    create_topics(fast)
    port = free_port()
    fast = fast.model_copy(update={"views_url": f"http://127.0.0.1:{port}"})
    roles = start_roles(fast, agent_specs(2, concurrency=4, region="eu-west"), billing=True,
                        views_port=port)
    env = {**os.environ, **fast.to_env(), "ONCEFLOW_VIEWS_URL": f"http://127.0.0.1:{port}"}
    try:
        yield fast, env
    finally:
        stop_roles(roles)


def test_the_documented_examples_run_as_written(
        stack: tuple[OnceflowSettings, dict[str, str]]) -> None:
    _, env = stack
    found = examples()
    assert len(found) == 3
    for code in found:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{code}\n--- stderr:\n{done.stderr[-3000:]}"
        assert done.stdout.strip(), code


def test_a_result_awaited_from_python_is_the_content_stores_bytes(
        stack: tuple[OnceflowSettings, dict[str, str]]) -> None:
    settings, _ = stack
    with Client(settings) as client:
        handle = client.submit(Step.cpu("r-1", handler="sha256", input=b"x" * 1000),
                               tenant="acme")
        result = handle.result(timeout=60)
        (settled,) = [e for e in events(settings, client.catalog["workunits"].name)
                      if isinstance(e, WorkUnitCompleted) and e.work_unit_id == "r-1"]
        assert settled.result_ref is not None
        assert result == open_content_store(settings).get(settled.result_ref)
        assert handle.outcome() == ("completed", "grant_holder", "")
        # bytes that are not what the digest names are refused, not returned
        root = Path(settings.content_store_url.removeprefix("file://"))
        (path,) = [p for p in root.rglob(settled.result_ref.sha256)]
        path.write_bytes(b"tampered")
        with pytest.raises(ContentIntegrityError):
            client.fetch(settled.result_ref)


def test_a_unit_without_a_result_raises_why_and_bad_requests_are_refused(
        stack: tuple[OnceflowSettings, dict[str, str]]) -> None:
    settings, _ = stack
    with Client(settings) as client:
        handle = client.submit(Step.cpu("f-1", handler="fail", max_attempts=1),
                               tenant="acme")
        with pytest.raises(UnitFailed) as failed:
            handle.result(timeout=60)
        assert failed.value.state == "failed" and failed.value.work_unit_id == "f-1"
        with pytest.raises(ValueError, match="already submitted with another payload"):
            client.submit(Step.cpu("f-1", handler="sha256"), tenant="acme")
        with pytest.raises(ValueError, match="needs its tenant"):
            client.pause(session="s1")
        from onceflow.infra.client import ControlRefused

        refused: Any
        with pytest.raises(ControlRefused) as refused:
            client.approve("f-1")
        assert "already done" in str(refused.value)
