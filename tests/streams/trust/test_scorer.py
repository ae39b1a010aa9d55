"""The trust reducer: the Beta-Binomial, the timeout EWMA, health, decay, and each node's breaker."""

from __future__ import annotations

from decimal import Decimal

import pytest

from onceflow.schemas import (
    NodeHeartbeat,
    SingleObjectCodec,
    TrustScoreUpdated,
    WorkUnitAttemptFailed,
    WorkUnitCompleted,
)
from onceflow.settings import TrustSettings
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from onceflow.streams.trust import NOT_THE_NODES_FAULT, TrustScorer, rescore_recorded

T0 = 1_700_000_000_000
HOUR = 3_600_000


def hb(node: str, at: int, health: str = "healthy", incarnation: str = "",
       sequence: int = 1) -> NodeHeartbeat:
    return NodeHeartbeat(event_id=f"hb-{node}-{at}-{health}-{incarnation}", occurred_at=at,
                         node_id=node, health_status=health,  # type: ignore[arg-type]
                         incarnation=incarnation, sequence=sequence)


def ok(node: str, n: int, at: int) -> WorkUnitCompleted:
    return WorkUnitCompleted(event_id=f"ok-{node}-{n}", occurred_at=at, work_unit_id=f"wu{n}",
                             selected_node_id=node, attempt_index=1, accepted=True,
                             settlement_reason="grant_holder", cpu_seconds=Decimal("0"))


def bad(node: str, n: int, at: int, *, timeout: bool = False,
        code: str = "node_fault") -> WorkUnitAttemptFailed:
    return WorkUnitAttemptFailed(event_id=f"bad-{node}-{n}-{code}", occurred_at=at,
                                 work_unit_id=f"wu{n}", selected_node_id=node, attempt_index=1,
                                 error_code="node_timeout" if timeout else code,
                                 lease_expired=timeout)


class Trust:
    def __init__(self, **cfg: object) -> None:
        self.cfg = TrustSettings(**cfg)  # type: ignore[arg-type]
        self.scorer = TrustScorer(self.cfg)
        self.state = MemoryState()
        self.facts: list[TrustScoreUpdated] = []

    def feed(self, *events: object) -> list[TrustScoreUpdated]:
        out = []
        for e in events:
            _, facts = self.scorer.apply(self.state, e)  # type: ignore[arg-type]
            out += [f for f in facts if isinstance(f, TrustScoreUpdated)]
        self.facts += out
        return out

    def last(self, node: str) -> TrustScoreUpdated:
        return [f for f in self.facts if f.node_id == node][-1]


def test_a_new_node_starts_at_the_prior() -> None:
    t = Trust()
    (f,) = t.feed(hb("n1", T0))
    assert (f.alpha, f.beta, f.reliability, f.trust_score) == (2.0, 2.0, 0.5, 0.5)


def test_successes_raise_and_failures_lower_reliability() -> None:
    t = Trust()
    t.feed(hb("n1", T0), *(ok("n1", i, T0) for i in range(6)))
    assert t.last("n1").alpha == 8.0 and t.last("n1").reliability == pytest.approx(0.8)
    t.feed(*(bad("n1", i, T0) for i in range(4)))
    assert t.last("n1").beta == 6.0 and t.last("n1").reliability == pytest.approx(8 / 14)


def test_the_timeout_penalty_is_an_ewma_capped_at_0_4() -> None:
    t = Trust()
    t.feed(bad("n1", 0, T0, timeout=True))
    assert t.last("n1").timeout_penalty == pytest.approx(0.2)
    t.feed(bad("n1", 1, T0, timeout=True))
    assert t.last("n1").timeout_penalty == pytest.approx(0.36)
    t.feed(*(bad("n1", i, T0, timeout=True) for i in range(2, 10)))
    assert t.last("n1").timeout_penalty == pytest.approx(0.4)
    t.feed(ok("n1", 99, T0))
    assert t.last("n1").timeout_penalty == pytest.approx(0.32)  # 0.8 of it


@pytest.mark.parametrize(("health", "penalty"), [("healthy", 0.0), ("degraded", 0.2),
                                                 ("down", 0.5)])
def test_health_penalties(health: str, penalty: float) -> None:
    t = Trust()
    (f,) = t.feed(hb("n1", T0, health))
    assert f.health_penalty == penalty
    assert f.trust_score == pytest.approx(max(0.0, 0.5 - penalty))


def test_evidence_decays_toward_the_prior_over_logged_time() -> None:
    t = Trust()
    t.feed(*(ok("n1", i, T0) for i in range(10)))  # alpha 12
    t.feed(hb("n1", T0 + 10 * HOUR))
    assert t.last("n1").alpha == pytest.approx(2 + 10 * 0.98 ** 10, rel=1e-6)
    assert t.last("n1").beta == pytest.approx(2.0)


def test_heartbeats_that_change_nothing_emit_nothing() -> None:
    t = Trust()
    t.feed(hb("n1", T0))
    assert t.feed(hb("n1", T0 + 500), hb("n1", T0 + 1000)) == []
    assert len(t.feed(hb("n1", T0 + 1500, "degraded"))) == 1


def test_one_lease_timeout_does_not_keep_a_fresh_node_out() -> None:
    """Quarantine used to shut a fresh node out for days after a single timeout."""
    t = Trust()
    t.feed(hb("n1", T0), bad("n1", 0, T0 + 10, timeout=True))
    assert t.last("n1").breaker == "closed" and not t.last("n1").quarantined


def test_a_node_failing_most_of_a_minute_of_attempts_opens_its_breaker() -> None:
    t = Trust()
    t.feed(hb("n1", T0))
    # 59 attempts, all failing: not yet enough attempts to judge
    t.feed(*(bad("n1", i, T0 + i * 500) for i in range(59)))
    assert t.last("n1").breaker == "closed"
    (opened,) = t.feed(bad("n1", 59, T0 + 59 * 500))
    assert opened.breaker == "open" and opened.reason == "breaker_opened" and opened.quarantined
    assert opened.breaker_until == T0 + 59 * 500 + t.cfg.breaker_open_ms


def test_half_of_the_attempts_failing_is_not_more_than_half() -> None:
    t = Trust()
    t.feed(*(bad("n1", i, T0 + i * 100) if i % 2 else ok("n1", i, T0 + i * 100)
             for i in range(80)))
    assert t.last("n1").breaker == "closed"


def test_attempts_older_than_the_window_do_not_count() -> None:
    t = Trust()
    t.feed(*(bad("n1", i, T0 + i * 2000) for i in range(70)))  # 70 failures over 140 s
    assert all(f.breaker == "closed" for f in t.facts)


def test_twenty_timeouts_in_thirty_seconds_open_the_breaker() -> None:
    t = Trust()
    t.feed(*(bad("n1", i, T0 + i * 1000, timeout=True) for i in range(19)))
    assert t.last("n1").breaker == "closed"
    t.feed(bad("n1", 19, T0 + 19 * 1000, timeout=True))
    assert t.last("n1").breaker == "open"


def _opened(t: Trust) -> int:
    t.feed(*(bad("n1", i, T0 + i * 100, timeout=True) for i in range(20)))
    assert t.last("n1").breaker == "open"
    return t.last("n1").breaker_until


def test_an_open_breaker_half_opens_after_its_time_and_closes_after_five_probes() -> None:
    t = Trust()
    until = _opened(t)
    assert t.feed(hb("n1", until - 1)) == [] or t.last("n1").breaker == "open"
    (half,) = t.feed(hb("n1", until))
    assert half.breaker == "half_open" and half.reason == "breaker_half_open"
    for i in range(4):
        t.feed(ok("n1", 100 + i, until + 1000 * (i + 1)))
        assert t.last("n1").breaker == "half_open"
    t.feed(ok("n1", 104, until + 5000))
    assert t.last("n1").breaker == "closed" and t.last("n1").reason == "breaker_closed"


def test_a_failed_probe_opens_the_breaker_again() -> None:
    t = Trust()
    until = _opened(t)
    t.feed(hb("n1", until), ok("n1", 100, until + 10))
    (again,) = t.feed(bad("n1", 101, until + 20))
    assert again.breaker == "open" and again.breaker_until == until + 20 + t.cfg.breaker_open_ms


def test_an_agent_restarted_under_the_node_id_starts_half_open_from_the_prior() -> None:
    t = Trust()
    t.feed(hb("n1", T0, incarnation="run-1"))
    t.feed(*(bad("n1", i, T0 + i * 100, timeout=True) for i in range(25)))
    assert t.last("n1").breaker == "open" and t.last("n1").trust_score < 0.2
    (restarted,) = t.feed(hb("n1", T0 + 3000, incarnation="run-2"))
    assert restarted.reason == "restarted" and restarted.breaker == "half_open"
    assert restarted.trust_score == pytest.approx(0.5)  # the prior, not the old score
    assert restarted.incarnation == "run-2"


@pytest.mark.parametrize("code", sorted(NOT_THE_NODES_FAULT))
def test_failures_that_are_not_the_nodes_fault_do_not_count(code: str) -> None:
    t = Trust()
    assert t.feed(*(bad("n1", i, T0 + i, code=code) for i in range(100))) == []


def test_every_update_re_runs_from_its_record_and_folding_rebuilds_the_state() -> None:
    t = Trust()
    t.feed(hb("n1", T0), hb("n2", T0, "degraded"))
    for i in range(30):
        at = T0 + i * 20 * 60_000
        t.feed(ok("n1", i, at) if i % 3 else bad("n1", i, at, timeout=i % 2 == 0),
               bad("n2", i, at) if i % 4 == 0 else ok("n2", i, at), hb("n2", at + 1))
    codec = SingleObjectCodec()
    rebuilt = MemoryState()
    for f in t.facts:
        decoded = codec.decode(codec.encode(f))
        assert isinstance(decoded, TrustScoreUpdated)
        score, alpha, beta, penalty = rescore_recorded(decoded, t.cfg)
        assert (score, alpha, beta, penalty) == (
            decoded.trust_score, decoded.alpha, decoded.beta, decoded.timeout_penalty)
        t.scorer.evolve(rebuilt, decoded)
    assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(
        [(k, v) for k, v in t.state.raw_items() if k.startswith(b"s\x00")])


def test_folding_the_updates_rebuilds_the_breakers_too() -> None:
    t = Trust()
    t.feed(hb("n1", T0, incarnation="a"))
    until = _opened(t)
    t.feed(hb("n1", until), ok("n1", 200, until + 1), bad("n1", 201, until + 2),
           hb("n1", until + 2 + t.cfg.breaker_open_ms),
           *(ok("n1", 300 + i, until + 40_000 + i) for i in range(5)),
           *(bad("n1", 400 + i, until + 50_000 + i * 10, timeout=i % 2 == 0)
             for i in range(10)),
           hb("n1", until + 60_000, incarnation="b"))
    assert {f.breaker for f in t.facts} == {"closed", "open", "half_open"}
    rebuilt = MemoryState()
    for f in t.facts:
        t.scorer.evolve(rebuilt, f)
    assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(
        [(k, v) for k, v in t.state.raw_items() if k.startswith(b"s\x00")])


def test_the_latest_update_of_a_node_is_its_whole_state() -> None:
    """The trust changelog is a table: after compaction only each node's latest update
    is left, and folding that alone must give the node's state, breaker included."""
    t = Trust()
    t.feed(hb("n1", T0), hb("n2", T0))
    t.feed(*(bad("n1", i, T0 + i * 700, timeout=i % 3 == 0) for i in range(40)),
           *(ok("n2", i, T0 + i * 300) if i % 4 else bad("n2", i, T0 + i * 300)
             for i in range(50)))
    assert any(f.breaker_buckets for f in t.facts)
    latest = {f.node_id: f for f in t.facts}
    compacted = MemoryState()
    for f in latest.values():
        t.scorer.evolve(compacted, f)
    assert fingerprint_items(compacted.raw_items()) == fingerprint_items(
        [(k, v) for k, v in t.state.raw_items() if k.startswith(b"s\x00")])


def test_a_clean_restart_keeps_the_breaker_closed() -> None:
    """`onceflow down` then `up`: every agent said `down` before going, so a fleet restarted
    cleanly is not throttled to one probe per node."""
    t = Trust()
    t.feed(hb("n1", T0, incarnation="run-1"), ok("n1", 1, T0 + 10),
           hb("n1", T0 + 20, "down", incarnation="run-1"))
    (back,) = t.feed(hb("n1", T0 + 5000, incarnation="run-2"))
    assert back.reason != "restarted" and back.breaker == "closed"
    assert back.incarnation == "run-2"


def test_two_live_agents_sharing_a_node_id_do_not_restart_it_on_every_heartbeat() -> None:
    t = Trust()
    t.feed(hb("n1", T0, incarnation="a", sequence=40), hb("n1", T0 + 10, incarnation="b",
                                                          sequence=41))
    t.feed(*(hb("n1", T0 + 500 * i, incarnation="ab"[i % 2], sequence=42 + i)
             for i in range(1, 10)))
    assert all(f.reason != "restarted" and f.breaker == "closed" for f in t.facts)
