"""A circuit breaker per node: what keeps work off a failing node without starving it.

Krako 2.0's rule. Closed, a node takes work; it opens when, over the last
minute of logged time, at least 60 attempts ran and more than half failed,
or when 20 of its leases timed out within 30 s. Open, it takes nothing for
30 s; then it is half-open: the scheduler lets one probe unit through at a
time, and 5 successes close it (a failure opens it again). An agent restarted
under the node's id starts half-open. No state lasts longer than that, so a
node that works again always gets work again: trust scores rank nodes, the
breaker only pauses one.

Windows are counted in buckets of logged time (5 s by default), so the state
is small enough to travel whole in every trust update: the trust changelog is
a table (the latest update per node is the node's state), and a replay of a
compacted one must reach the same breaker.
"""

from __future__ import annotations

from dataclasses import dataclass

from onceflow.schemas import BreakerBucket, BreakerState, TrustOutcome, TrustScoreUpdated
from onceflow.streams.trust.settings import TrustSettings

__all__ = ["Breaker"]


@dataclass(frozen=True, slots=True)
class Breaker:
    state: BreakerState = "closed"
    #: open: when it turns half-open (logged time, ms)
    until: int = 0
    #: half-open: successful probes so far
    probes_ok: int = 0
    #: closed: the node's attempts by bucket of logged time, oldest first
    buckets: tuple[BreakerBucket, ...] = ()

    def at(self, now: int) -> Breaker:
        """The breaker once logged time reaches `now` (an open one may have turned half-open)."""
        if self.state == "open" and now >= self.until:
            return Breaker("half_open")
        return self

    def after(self, outcome: TrustOutcome, now: int, cfg: TrustSettings) -> Breaker:
        """The breaker after one of the node's attempts ended (heartbeats only move time)."""
        b = self.at(now)
        if outcome == "heartbeat" or b.state == "open":
            # An open breaker ignores the late ends of attempts placed before it opened.
            return b
        failed = outcome != "success"
        if b.state == "half_open":
            if failed:
                return Breaker("open", now + cfg.breaker_open_ms)
            if b.probes_ok + 1 >= cfg.breaker_close_after:
                return Breaker()
            return Breaker("half_open", probes_ok=b.probes_ok + 1)
        bucket = now // cfg.breaker_bucket_ms
        oldest = bucket - max(cfg.breaker_window_ms, cfg.breaker_timeout_window_ms) \
            // cfg.breaker_bucket_ms
        kept = [x for x in b.buckets if x.bucket > oldest]
        timed_out = int(outcome == "timeout")
        if kept and kept[-1].bucket == bucket:
            last = kept.pop()
            kept.append(BreakerBucket(bucket=bucket, attempts=last.attempts + 1,
                                      failed=last.failed + int(failed),
                                      timeouts=last.timeouts + timed_out))
        else:
            kept.append(BreakerBucket(bucket=bucket, attempts=1, failed=int(failed),
                                      timeouts=timed_out))
        window = [x for x in kept if x.bucket > bucket - cfg.breaker_window_ms
                  // cfg.breaker_bucket_ms]
        ran = sum(x.attempts for x in window)
        failures = sum(x.failed for x in window)
        timeouts = sum(x.timeouts for x in kept if x.bucket > bucket
                       - cfg.breaker_timeout_window_ms // cfg.breaker_bucket_ms)
        if ((ran >= cfg.breaker_min_attempts and failures > cfg.breaker_failure_ratio * ran)
                or timeouts >= cfg.breaker_timeouts):
            return Breaker("open", now + cfg.breaker_open_ms)
        return Breaker("closed", buckets=tuple(kept))

    @classmethod
    def recorded(cls, fact: TrustScoreUpdated) -> Breaker:
        """The breaker an update left: every update records it whole."""
        return cls(fact.breaker, fact.breaker_until, fact.breaker_probes_ok,
                   tuple(fact.breaker_buckets))
