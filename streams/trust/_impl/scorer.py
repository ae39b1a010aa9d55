"""Trust: how far the scheduler should rely on each node, from what the log saw it do.

A pure reducer over heartbeats (`nodes`) and attempt outcomes (`outcomes`,
which the scheduler routes there by node), both partitioned by node, so one
partition holds everything about its nodes:

- reliability is a Beta-Binomial with prior alpha = beta = 2: an accepted
  completion adds to alpha, a failure or a lease timeout to beta;
- a timeout penalty is an EWMA of "was this outcome a timeout" (lambda 0.2,
  capped at 0.4);
- a health penalty comes from the last heartbeat (degraded 0.2, down 0.5);
- the evidence decays toward the prior over logged time (0.98 per hour);
- score = reliability - timeout penalty - health penalty, clamped to [0, 1].

A node scoring below `quarantine_below` is quarantined (the scheduler filters
it out) until it scores above `release_above`. Each update records the state
it started from and the input it applied, so `rescore_recorded` re-runs it
from its record alone: the two input topics may interleave differently in a
replay, but every decision can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from onceflow.schemas import (
    Event,
    NodeHeartbeat,
    TrustOutcome,
    TrustReason,
    TrustScoreUpdated,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from onceflow.streams.ids import caused_by
from onceflow.streams.trust.settings import TrustSettings
from onceflow.streams.types import Reducer, State

__all__ = ["NOT_THE_NODES_FAULT", "TrustScorer", "TrustState", "rescore_recorded", "score_after"]

_HOUR_MS = 3_600_000
#: failures the scheduler reports that say nothing about the node
NOT_THE_NODES_FAULT = frozenset({"parent_failed", "abandoned_by_operator"})


@dataclass(frozen=True)
class TrustState:
    alpha: float
    beta: float
    timeout_penalty: float
    at: int
    quarantined: bool = False


def _clamp(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


def score_after(prev: TrustState, outcome: TrustOutcome | Literal[""], at: int, health: str, cfg: TrustSettings
                ) -> tuple[TrustState, float, float, float]:
    """Decay `prev` to `at`, apply one outcome; returns (state, score, reliability, health
    penalty). The one function both deciding and re-checking use."""
    alpha, beta, penalty = prev.alpha, prev.beta, prev.timeout_penalty
    if at > prev.at:
        keep = cfg.decay_per_hour ** ((at - prev.at) / _HOUR_MS)
        alpha = cfg.prior_alpha + (alpha - cfg.prior_alpha) * keep
        beta = cfg.prior_beta + (beta - cfg.prior_beta) * keep
        penalty *= keep
    if outcome == "success":
        alpha += 1
        penalty = (1 - cfg.timeout_lambda) * penalty
    elif outcome == "failure":
        beta += 1
        penalty = (1 - cfg.timeout_lambda) * penalty
    elif outcome == "timeout":
        beta += 1
        penalty = min(cfg.timeout_cap, (1 - cfg.timeout_lambda) * penalty + cfg.timeout_lambda)
    reliability = alpha / (alpha + beta)
    health_penalty = cfg.health_penalties.get(health, 0.0)
    score = _clamp(reliability - penalty - health_penalty)
    # Hysteresis: out below one threshold, back only above a higher one.
    quarantined = score <= cfg.release_above if prev.quarantined else score < cfg.quarantine_below
    state = TrustState(round(alpha, 9), round(beta, 9), round(penalty, 9), max(at, prev.at),
                       quarantined)
    return state, round(score, 9), round(reliability, 9), health_penalty


def rescore_recorded(fact: TrustScoreUpdated, cfg: TrustSettings
                     ) -> tuple[float, bool, float, float, float]:
    """(score, quarantined, alpha, beta, timeout penalty) from the update's own record."""
    prev = TrustState(fact.previous_alpha, fact.previous_beta, fact.previous_timeout_penalty,
                      fact.previous_at, fact.previous_quarantined)
    state, score, _, _ = score_after(prev, fact.outcome, fact.occurred_at, fact.health_status,
                                     cfg)
    return score, state.quarantined, state.alpha, state.beta, state.timeout_penalty


def _key(node: str) -> str:
    return f"n:{node}"


class TrustScorer(Reducer):
    name = "trust"
    accepts = frozenset({"node.heartbeat", "workunit.completed", "workunit.failed"})

    def __init__(self, settings: TrustSettings) -> None:
        self.cfg = settings

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        health: str | None = None
        outcome: TrustOutcome
        if isinstance(event, NodeHeartbeat):
            node, outcome, health = event.node_id, "heartbeat", event.health_status
        elif isinstance(event, WorkUnitCompleted):
            if not event.accepted:
                return ()  # a report, or a fenced attempt: its lease expiry counted already
            node, outcome = event.selected_node_id, "success"
        elif isinstance(event, WorkUnitFailed):
            if not event.selected_node_id or event.error_code in NOT_THE_NODES_FAULT:
                return ()
            timeout = event.reported_by_scheduler and event.error_code == "node_timeout"
            node, outcome = event.selected_node_id, "timeout" if timeout else "failure"
        else:
            return ()
        known = state.get(_key(node))
        if known is None:
            prev = TrustState(self.cfg.prior_alpha, self.cfg.prior_beta, 0.0, event.occurred_at)
            prev_health, prev_score = "healthy", -1.0
        else:
            prev = TrustState(known["alpha"], known["beta"], known["penalty"], known["at"],
                              known["quarantined"])
            prev_health, prev_score = known["health"], known["score"]
        health = health or prev_health
        new, score, reliability, health_penalty = score_after(prev, outcome, event.occurred_at,
                                                              health, self.cfg)
        if (outcome == "heartbeat" and known is not None and health == prev_health
                and new.quarantined == prev.quarantined
                and abs(score - prev_score) < self.cfg.min_change):
            return ()  # nothing worth telling the scheduler; the state stays as recorded
        reason: TrustReason
        if new.quarantined != prev.quarantined:
            reason = "quarantined" if new.quarantined else "released"
        else:
            reason = outcome
        return (TrustScoreUpdated(
            **caused_by(event, f"trust:{node}", execution_session_id=""), node_id=node,
            trust_score=score, previous_score=max(prev_score, 0.0), alpha=new.alpha,
            beta=new.beta, timeout_penalty=new.timeout_penalty, health_penalty=health_penalty,
            quarantined=new.quarantined, reason=reason, reliability=reliability,
            health_status=health, outcome=outcome, source_event_id=event.event_id,
            previous_alpha=prev.alpha, previous_beta=prev.beta,
            previous_timeout_penalty=prev.timeout_penalty, previous_at=prev.at,
            previous_quarantined=prev.quarantined,
        ),)

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, TrustScoreUpdated):
            state.set(_key(fact.node_id), {
                "alpha": fact.alpha, "beta": fact.beta, "penalty": fact.timeout_penalty,
                "at": max(fact.occurred_at, fact.previous_at), "quarantined": fact.quarantined,
                "health": fact.health_status, "score": fact.trust_score,
            })
