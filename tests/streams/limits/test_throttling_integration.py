"""The Deterministic AI Runtime's throttling-100: 100 LLM steps, a provider limit of 3."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest

from onceflow.agents import OpenAICompatibleProvider
from onceflow.schemas import SlotGranted, SlotQueued
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import LimitsSettings
from onceflow.streams.limits.worker import build_limiter
from onceflow.streams.runtime import verify_replay
from tests.agents.fixtures import ChatServer, Cluster, fast_settings, unit
from tests.fixtures import events

pytestmark = [pytest.mark.integration]


@pytest.fixture
def server() -> Iterator[ChatServer]:
    s = ChatServer()
    s.answer_delay_s = 0.03  # long enough for requests to overlap if nothing held them
    yield s
    s.close()


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    fast = fast_settings(settings)
    c = Cluster(fast.model_copy(update={
        "limits": LimitsSettings(scopes={"provider:openai": 3}),
        "agent": fast.agent.model_copy(update={"llm_provider": "openai"}),
    }))
    yield c
    c.close()


def test_throttling_100_never_has_more_than_3_calls_at_the_provider(
        cluster: Cluster, server: ChatServer) -> None:
    cluster.start_scheduler()
    for node in ("n1", "n2", "n3"):
        cluster.start_agent(node, kinds=("llm_pod",), concurrency=4,
                            provider=OpenAICompatibleProvider(server.url, "sk", "gpt-test", 5.0,
                                                              Decimal("0.002")))
    steps = [unit(f"step-{i}", kind="llm_pod", prompt=f"step {i}", model="gpt-test",
                  lease_ms=20_000) for i in range(100)]
    cluster.submit(*steps)
    status = cluster.wait_settled([u.work_unit_id or "" for u in steps], timeout=120)
    assert set(status.values()) == {"completed"}
    print(f"throttling-100: {len(server.requests)} requests, at most {server.max_in_flight} "
          "at once")
    assert server.max_in_flight <= 3
    assert len(server.answered_at) == 100
    flow = events(cluster.settings, cluster.catalog["flow"].name)
    assert sum(isinstance(f, SlotGranted) for f in flow) == 100
    assert any(isinstance(f, SlotQueued) and f.limit == 3 for f in flow)
    # what `onceflow limits` shows afterwards: the scope, its limit, nothing held
    shown = subprocess.run([sys.executable, "-m", "onceflow", "limits", "--format", "json"],
                           env=cluster.cli_env(), capture_output=True,
                           text=True, timeout=60, check=True)
    slots = json.loads(shown.stdout)["slots"]
    assert slots == [{"scope": "provider:openai", "in_use": 0, "limit": 3, "waiting": 0}]
    for reducer, topic in ((cluster.scheduler.reducer, "workunits"),  # type: ignore[union-attr]
                           (build_limiter(cluster.settings).reducer, "flow")):
        check = verify_replay(reducer, cluster.settings, cluster.catalog[topic].name)
        assert check.equal, (topic, check.first_difference())
