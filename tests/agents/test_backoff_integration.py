"""Provider backoff end to end: a provider answering 429 for 2 s gets no retry storm."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from onceflow.agents import OpenAICompatibleProvider
from onceflow.schemas import ProviderScopePaused, WorkUnitAttemptFailed, WorkUnitFailed
from onceflow.settings import OnceflowSettings
from onceflow.streams.runtime import verify_replay
from tests.agents.fixtures import ChatServer, Cluster, fast_settings, unit
from tests.fixtures import events

pytestmark = [pytest.mark.integration]

COOLDOWN_S = 2.0


@pytest.fixture
def server() -> Iterator[ChatServer]:
    s = ChatServer()
    s.refuse_for_s = COOLDOWN_S
    s.fail_headers = {"retry-after": str(COOLDOWN_S)}
    s.answer_delay_s = 0.02
    yield s
    s.close()


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    c = Cluster(fast_settings(settings))
    yield c
    c.close()


def test_a_rate_limited_provider_is_left_alone_until_it_said_and_nothing_is_lost(
        cluster: Cluster, server: ChatServer) -> None:
    cluster.start_scheduler()
    cluster.start_agent("n1", kinds=("llm_pod",), concurrency=4, provider=OpenAICompatibleProvider(
        server.url, "sk-test", "gpt-test", 5.0, Decimal("0.002")))
    # one attempt each: a 429 must not use it up
    units = [unit(f"llm-{i}", kind="llm_pod", prompt=f"question {i}", model="gpt-test",
                  max_attempts=1, lease_ms=10_000) for i in range(20)]
    cluster.submit(*units)
    status = cluster.wait_settled([u.work_unit_id or "" for u in units], timeout=60)
    assert set(status.values()) == {"completed"}, status

    first = server.first_at
    assert first is not None and server.refused_at, "the provider never refused"
    # The first wave (what the agent had started before any answer came back) is refused;
    # after that, nothing reaches the provider until the time it named.
    wave_ends = min(server.refused_at) + 0.25
    during = [r for r in server.requests if wave_ends <= r["at"] < first + COOLDOWN_S]
    print(f"backoff: {len(server.refused_at)} refused, {len(during)} during the cooldown, "
          f"max {server.max_in_flight} in flight")
    assert len(during) <= 1, f"{len(during)} requests during the cooldown"
    assert min(server.answered_at) >= first + COOLDOWN_S - 0.05
    facts = events(cluster.settings, cluster.catalog["workunits"].name)
    pauses = [f for f in facts if isinstance(f, ProviderScopePaused) and f.broadcast]
    assert pauses and pauses[0].scope == "model:gpt-test" and pauses[0].provider == "openai"
    backoffs = [f for f in facts if isinstance(f, WorkUnitAttemptFailed)
                and f.error_code == "provider_backoff"]
    assert backoffs and not any(isinstance(f, WorkUnitFailed) for f in facts)
    check = verify_replay(cluster.scheduler.reducer,  # type: ignore[union-attr]
                          cluster.settings, cluster.catalog["workunits"].name)
    assert check.equal, check.first_difference()
