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

The score ranks nodes in placement; it never keeps a node out. What keeps
work off a failing node is its circuit breaker (`breaker.py`), which opens for
30 s at a time and then probes, so a node that works again gets work again.
An agent restarted under the node's id after a crash (a new incarnation in
its heartbeats, the old one never having said `down` or `draining`) starts
from the prior with a half-open breaker; a clean restart (`onceflow down` and
`up`, a deploy) keeps what the node had, so a whole fleet restarted cleanly is
not throttled to probes. Each update records the
score state it started from and the input it applied, so `rescore_recorded`
re-runs the score from its record alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from onceflow.schemas import (
    BreakerBucket,
    BreakerState,
    Event,
    NodeHeartbeat,
    TrustOutcome,
    TrustReason,
    TrustScoreUpdated,
    WorkUnitAttemptFailed,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from onceflow.streams.ids import caused_by
from onceflow.streams.trust._impl.breaker import Breaker
from onceflow.streams.trust.settings import TrustSettings
from onceflow.streams.types import Reducer, State

__all__ = ["NOT_THE_NODES_FAULT", "NodeTrust", "TrustScorer", "TrustState", "rescore_recorded",
           "score_after"]

_HOUR_MS = 3_600_000
#: a new incarnation is a restart only in its first heartbeats (sequence numbers from 1)
_FIRST_HEARTBEATS = 2
#: failures that say nothing about the node: the scheduler's own (a parent failed, an
#: operator abandoned the unit) and the unit's (no such handler, the handler's own
#: error, a provider refusing the request or asking to be called later)
NOT_THE_NODES_FAULT = frozenset({
    "parent_failed", "abandoned_by_operator", "unknown_handler", "handler_error",
    "provider_rejected", "admission_reject", "provider_backoff"})


@dataclass(frozen=True)
class TrustState:
    alpha: float
    beta: float
    timeout_penalty: float
    at: int


def _clamp(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


def score_after(prev: TrustState, outcome: TrustOutcome | Literal[""], at: int, health: str,
                cfg: TrustSettings) -> tuple[TrustState, float, float, float]:
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
    state = TrustState(round(alpha, 9), round(beta, 9), round(penalty, 9), max(at, prev.at))
    return state, round(score, 9), round(reliability, 9), health_penalty


def rescore_recorded(fact: TrustScoreUpdated, cfg: TrustSettings
                     ) -> tuple[float, float, float, float]:
    """(score, alpha, beta, timeout penalty) from the update's own record."""
    prev = TrustState(fact.previous_alpha, fact.previous_beta, fact.previous_timeout_penalty,
                      fact.previous_at)
    state, score, _, _ = score_after(prev, fact.outcome, fact.occurred_at, fact.health_status,
                                     cfg)
    return score, state.alpha, state.beta, state.timeout_penalty


def _key(node: str) -> str:
    return f"n:{node}"


@dataclass(frozen=True, slots=True)
class NodeTrust:
    """What trust scoring keeps per node."""

    score_state: TrustState
    health: str
    score: float
    breaker: Breaker
    incarnation: str

    @classmethod
    def load(cls, state: State, node: str) -> NodeTrust | None:
        d = state.get(_key(node))
        if d is None:
            return None
        b = d["breaker"]
        breaker = Breaker(b["state"], b["until"], b["probes_ok"], tuple(
            BreakerBucket(bucket=x[0], attempts=x[1], failed=x[2], timeouts=x[3])
            for x in b["buckets"]))
        return cls(TrustState(d["alpha"], d["beta"], d["penalty"], d["at"]), d["health"],
                   d["score"], breaker, d["incarnation"])

    @classmethod
    def recorded(cls, fact: TrustScoreUpdated) -> NodeTrust:
        """The node's state an update left: a function of the update alone, since the
        trust changelog is a table (compaction keeps only each node's latest)."""
        return cls(TrustState(fact.alpha, fact.beta, fact.timeout_penalty,
                              max(fact.occurred_at, fact.previous_at)),
                   fact.health_status, fact.trust_score, Breaker.recorded(fact), fact.incarnation)

    def save(self, state: State, node: str) -> None:
        t, b = self.score_state, self.breaker
        state.set(_key(node), {
            "alpha": t.alpha, "beta": t.beta, "penalty": t.timeout_penalty, "at": t.at,
            "health": self.health, "score": self.score, "incarnation": self.incarnation,
            "breaker": {"state": b.state, "until": b.until, "probes_ok": b.probes_ok,
                        "buckets": [[x.bucket, x.attempts, x.failed, x.timeouts]
                                    for x in b.buckets]},
        })


_BREAKER_REASON: dict[BreakerState, TrustReason] = {
    "open": "breaker_opened", "half_open": "breaker_half_open", "closed": "breaker_closed"}


class TrustScorer(Reducer):
    name = "trust"
    #: `workunit.failed`: what releases before 6 routed here for a failed attempt (decoded
    #: as `workunit.attempt.failed`, or, for a last attempt, as the unit's failure)
    accepts = frozenset({"node.heartbeat", "workunit.completed", "workunit.attempt.failed",
                         "workunit.failed"})

    def __init__(self, settings: TrustSettings) -> None:
        self.cfg = settings

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        health: str | None = None
        incarnation = ""
        outcome: TrustOutcome
        if isinstance(event, NodeHeartbeat):
            node, outcome, health = event.node_id, "heartbeat", event.health_status
            incarnation = event.incarnation
        elif isinstance(event, WorkUnitCompleted):
            if not event.accepted:
                return ()  # a report, or a fenced attempt: its lease expiry counted already
            node, outcome = event.selected_node_id, "success"
        elif isinstance(event, WorkUnitAttemptFailed | WorkUnitFailed):
            if not event.selected_node_id or event.error_code in NOT_THE_NODES_FAULT:
                return ()
            lease_expired = (event.lease_expired if isinstance(event, WorkUnitAttemptFailed)
                             else event.reported_by_scheduler)
            timeout = lease_expired and event.error_code == "node_timeout"
            node, outcome = event.selected_node_id, "timeout" if timeout else "failure"
        else:
            return ()
        now = event.occurred_at
        known = NodeTrust.load(state, node)
        prior = TrustState(self.cfg.prior_alpha, self.cfg.prior_beta, 0.0, now)
        # A new run of the node's agent after the old one crashed: its first heartbeats
        # name a new incarnation, and the old run never said goodbye (an agent that stops
        # cleanly heartbeats `down` or `draining` last). Only the first heartbeats count,
        # so two live agents sharing a node id do not restart it on every heartbeat.
        restarted = (known is not None and bool(incarnation) and bool(known.incarnation)
                     and incarnation != known.incarnation
                     and known.health not in ("down", "draining")
                     and isinstance(event, NodeHeartbeat)
                     and event.sequence <= _FIRST_HEARTBEATS)
        if known is None:
            prev, prev_health, prev_score, breaker = prior, "healthy", -1.0, Breaker()
        elif restarted:
            # A new run of the node's agent: what the old one did says little about it,
            # and it must earn full load through probes, not wait for evidence to fade.
            prev, prev_health, prev_score = prior, known.health, known.score
            breaker = Breaker("half_open")
        else:
            prev, prev_health, prev_score, breaker = (known.score_state, known.health,
                                                      known.score, known.breaker)
        prev_breaker = known.breaker.state if known is not None else "closed"
        health = health or prev_health
        new, score, reliability, health_penalty = score_after(prev, outcome, now, health,
                                                              self.cfg)
        breaker = breaker.after(outcome, now, self.cfg)
        if (outcome == "heartbeat" and known is not None and not restarted
                and health == prev_health and breaker.state == prev_breaker
                and abs(score - prev_score) < self.cfg.min_change):
            return ()  # nothing worth telling the scheduler; the state stays as recorded
        reason: TrustReason
        if restarted:
            reason = "restarted"
        elif breaker.state != prev_breaker:
            reason = _BREAKER_REASON[breaker.state]
        else:
            reason = outcome
        return (TrustScoreUpdated(
            **caused_by(event, f"trust:{node}", execution_session_id=""), node_id=node,
            trust_score=score, previous_score=max(prev_score, 0.0), alpha=new.alpha,
            beta=new.beta, timeout_penalty=new.timeout_penalty, health_penalty=health_penalty,
            quarantined=breaker.state == "open", reason=reason, reliability=reliability,
            health_status=health, outcome=outcome, source_event_id=event.event_id,
            previous_alpha=prev.alpha, previous_beta=prev.beta,
            previous_timeout_penalty=prev.timeout_penalty, previous_at=prev.at,
            previous_quarantined=prev_breaker == "open", breaker=breaker.state,
            breaker_until=breaker.until, breaker_probes_ok=breaker.probes_ok,
            breaker_buckets=list(breaker.buckets),
            incarnation=incarnation or (known.incarnation if known is not None else ""),
        ),)

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, TrustScoreUpdated):
            NodeTrust.recorded(fact).save(state, fact.node_id)
