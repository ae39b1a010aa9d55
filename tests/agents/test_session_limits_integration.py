"""A session's execution limits on a live stack: a session over its token limit is stopped,
waits in the operator's inbox, and goes on once an operator raises the limit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onceflow.schemas import SessionLimitCrossed, SessionLimits, SlotGranted
from onceflow.settings import OnceflowSettings
from onceflow.streams.limits import LimitsSettings
from onceflow.streams.limits.worker import build_limiter
from onceflow.streams.runtime import verify_replay
from tests.agents.fixtures import Cluster, fast_settings, unit
from tests.agents.test_control_integration import cli_json, inbox, run_cli
from tests.fixtures import events, wait_for

pytestmark = [pytest.mark.integration]

#: each step: 100 input tokens (400 characters) and max_tokens 100 out, which the stub
#: provider answers in full: 200 tokens billed per step
STEP_TOKENS = 200


@pytest.fixture
def cluster(settings: OnceflowSettings) -> Iterator[Cluster]:
    fast = fast_settings(settings)
    c = Cluster(fast.model_copy(update={"limits": LimitsSettings(session_budgets=True)}))
    yield c
    c.close()


def test_a_session_over_its_token_limit_is_stopped_listed_in_the_inbox_and_resumed_by_a_raise(
        cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_billing()
    cluster.start_agent("n1", kinds=("llm_pod",), concurrency=2)
    limits = SessionLimits(max_tokens=5 * STEP_TOKENS)
    steps = [unit(f"step{i}", kind="llm_pod", prompt="x" * 400, parameters={"max_tokens": "100"},
                  session_limits=limits) for i in range(10)]
    cluster.submit(*steps)
    ids = [s.work_unit_id or "" for s in steps]

    def reached() -> list[SessionLimitCrossed]:
        return [f for f in events(cluster.settings, cluster.catalog["flow"].name)
                if isinstance(f, SessionLimitCrossed) and f.threshold == "reached"]

    wait_for(reached, timeout=60, what="the session to reach its token limit")
    (crossed,) = reached()
    assert crossed.limit == "max_tokens" and crossed.on_limit == "park"
    assert crossed.used == f"{5 * STEP_TOKENS} billed"
    # it is in the inbox, and its steps stay where they are: five ran, five wait
    wait_for(lambda: [i["kind"] for i in inbox(cluster)] == ["session_limit"], timeout=30,
             what="the parked session in the inbox")
    (item,) = inbox(cluster)
    assert item["session_id"] == "s1" and "max_tokens" in item["reason"]
    assert "onceflow session limits s1 --tenant acme --max-tokens N" in item["resolve"]
    wait_for(lambda: sum(cluster.progress().progress.status.get(i) == "completed"
                         for i in ids) == 5, timeout=30, what="the five steps within the limit")
    granted = {f.work_unit_id for f in events(cluster.settings, cluster.catalog["flow"].name)
               if isinstance(f, SlotGranted)}
    assert len(granted) == 5  # no step past the limit was let run
    shown = cli_json(cluster, "session", "show", "s1", "--tenant", "acme")
    assert shown["state"] == "paused" and "max_tokens" in shown["at_limit"]
    assert any("80 %" in w for w in shown["warnings"])
    # a plain resume is refused: only a raised limit lets it go on
    refused = run_cli(cluster, "resume", "--session", "s1", "--tenant", "acme")
    assert refused.returncode == 1
    assert "resume session acme/s1 refused" in refused.stderr
    assert "parked at one of its limits" in refused.stderr
    raised = cli_json(cluster, "session", "limits", "s1", "--tenant", "acme", "--max-tokens",
                      str(20 * STEP_TOKENS), "--reason", "approved by finance")
    assert raised["outcome"] == "the session was parked at a limit and resumes"
    assert raised["limits"]["max_tokens"] == 20 * STEP_TOKENS
    assert set(cluster.wait_settled(ids, timeout=60).values()) == {"completed"}
    assert inbox(cluster) == []
    for reducer, topic in ((cluster.scheduler.reducer, "workunits"),  # type: ignore[union-attr]
                           (build_limiter(cluster.settings).reducer, "flow")):
        check = verify_replay(reducer, cluster.settings, cluster.catalog[topic].name)
        assert check.equal, (topic, check.first_difference())
