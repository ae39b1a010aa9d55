"""A circuit breaker per node: what keeps work off a failing node without starving it.

Krako 2.0's rule. Closed, a node takes work; it opens when, over the last
minute of logged time, at least 60 attempts ran and more than half failed,
or when 20 of its leases timed out within 30 s. Open, it takes nothing for
30 s; then it is half-open: the scheduler lets one probe unit through at a
time, and 5 successes close it (a failure opens it again). An agent restarted
under the node's id starts half-open. No state lasts longer than that, so a
node that works again always gets work again: trust scores rank nodes, the
breaker only pauses one.

Windows are counted in one-second buckets of logged time, so the state stays
small on a busy node and a replay counts the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onceflow.schemas import BreakerState, TrustOutcome
from onceflow.streams.trust.settings import TrustSettings

__all__ = ["Breaker"]


def _bucketed(buckets: tuple[tuple[int, int, int], ...], second: int, since: int,
              failed: bool) -> tuple[tuple[int, int, int], ...]:
    """(second, count, failed) buckets newer than `since`, with one more entry at `second`."""
    kept = [b for b in buckets if b[0] > since]
    if kept and kept[-1][0] == second:
        _, n, f = kept.pop()
        kept.append((second, n + 1, f + int(failed)))
    else:
        kept.append((second, 1, int(failed)))
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class Breaker:
    state: BreakerState = "closed"
    #: open: when it turns half-open (logged time, ms)
    until: int = 0
    #: half-open: successful probes so far
    probes_ok: int = 0
    #: closed: attempts per second of logged time, as (second, attempts, failed)
    attempts: tuple[tuple[int, int, int], ...] = ()
    #: closed: lease timeouts per second, as (second, timeouts, timeouts)
    timeouts: tuple[tuple[int, int, int], ...] = ()

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
        second = now // 1000
        attempts = _bucketed(b.attempts, second, second - cfg.breaker_window_ms // 1000, failed)
        timeouts = b.timeouts
        if outcome == "timeout":
            timeouts = _bucketed(timeouts, second,
                                 second - cfg.breaker_timeout_window_ms // 1000, True)
        ran = sum(n for _, n, _ in attempts)
        failures = sum(f for _, _, f in attempts)
        timeouts_since = second - cfg.breaker_timeout_window_ms // 1000
        timed_out = sum(n for s, n, _ in timeouts if s > timeouts_since)
        if ((ran >= cfg.breaker_min_attempts and failures > cfg.breaker_failure_ratio * ran)
                or timed_out >= cfg.breaker_timeouts):
            return Breaker("open", now + cfg.breaker_open_ms)
        return Breaker("closed", attempts=attempts, timeouts=timeouts)

    def to_state(self) -> dict[str, Any]:
        return {"state": self.state, "until": self.until, "probes_ok": self.probes_ok,
                "attempts": [list(b) for b in self.attempts],
                "timeouts": [list(b) for b in self.timeouts]}

    @classmethod
    def from_state(cls, d: dict[str, Any] | None) -> Breaker:
        if d is None:
            return cls()
        return cls(d["state"], d["until"], d["probes_ok"],
                   tuple((s, n, f) for s, n, f in d["attempts"]),
                   tuple((s, n, f) for s, n, f in d["timeouts"]))
