"""The trust reducer: the Beta-Binomial, the timeout EWMA, health, decay, quarantine."""

from __future__ import annotations

from decimal import Decimal

import pytest

from onceflow.schemas import (
    NodeHeartbeat,
    SingleObjectCodec,
    TrustScoreUpdated,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.settings import TrustSettings
from onceflow.streams.state import MemoryState
from onceflow.streams.trust import TrustScorer, rescore_recorded

T0 = 1_700_000_000_000
HOUR = 3_600_000


def hb(node: str, at: int, health: str = "healthy") -> NodeHeartbeat:
    return NodeHeartbeat(event_id=f"hb-{node}-{at}-{health}", occurred_at=at, node_id=node,
                         health_status=health)  # type: ignore[arg-type]


def ok(node: str, n: int, at: int) -> WorkUnitCompleted:
    return WorkUnitCompleted(event_id=f"ok-{node}-{n}", occurred_at=at, work_unit_id=f"wu{n}",
                             selected_node_id=node, attempt_index=1, accepted=True,
                             settlement_reason="grant_holder", cpu_seconds=Decimal("0"))


def bad(node: str, n: int, at: int, *, timeout: bool = False,
        code: str = "handler_error") -> WorkUnitFailed:
    return WorkUnitFailed(event_id=f"bad-{node}-{n}-{code}", occurred_at=at,
                          work_unit_id=f"wu{n}", selected_node_id=node, attempt_index=1,
                          error_code="node_timeout" if timeout else code,
                          reported_by_scheduler=timeout)


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


def test_a_failing_node_is_quarantined_and_released_when_it_behaves() -> None:
    t = Trust()
    t.feed(hb("n2", T0))
    t.feed(*(bad("n2", i, T0 + i) for i in range(3)))
    assert t.last("n2").quarantined and t.last("n2").reason in ("quarantined", "failure")
    assert t.last("n2").trust_score < t.cfg.quarantine_below
    n = 0
    while t.last("n2").quarantined:
        n += 1
        t.feed(ok("n2", 100 + n, T0 + 100 + n))
        assert n < 50, "never released"
    assert t.last("n2").trust_score > t.cfg.release_above
    assert t.last("n2").reason == "released"


def test_failures_that_are_not_the_nodes_fault_do_not_count() -> None:
    t = Trust()
    assert t.feed(bad("n1", 0, T0, code="parent_failed"),
                  bad("n1", 1, T0, code="abandoned_by_operator")) == []


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
        score, quarantined, alpha, beta, penalty = rescore_recorded(decoded, t.cfg)
        assert (score, quarantined, alpha, beta, penalty) == (
            decoded.trust_score, decoded.quarantined, decoded.alpha, decoded.beta,
            decoded.timeout_penalty)
        t.scorer.evolve(rebuilt, decoded)
    assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(
        [(k, v) for k, v in t.state.raw_items() if k.startswith(b"s\x00")])
