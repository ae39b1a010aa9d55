"""Rate windows: requests and tokens per minute per scope, token buckets in logged time.

A request that finds a bucket short is granted with a `not_before` (the time
the bucket will have refilled for it) and the bucket goes into debt, so the
next request's turn comes after it: requests are spaced, never retried in a
storm. Tokens are estimated at grant time and corrected by the real usage
the ledger reports. A grant or a correction carries the levels after it
(`rate_levels`), which is what the limiter's changelog folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onceflow.streams.limits._impl.records import RateWindow
from onceflow.streams.limits._impl.scopes import ScopeLimits
from onceflow.streams.types import State

__all__ = ["WINDOW_PREFIX", "evolve_levels", "rate_take", "rate_window_level", "rate_windows",
           "refilled", "window_key"]

_MINUTE_MS = 60_000
WINDOW_PREFIX = "rb:"


def window_key(window: str) -> str:
    """`window`: `rpm:<scope>` or `tpm:<scope>`."""
    return f"{WINDOW_PREFIX}{window}"


def refilled(last: RateWindow | None, capacity: float, per_minute: float, now: int) -> float:
    """A token bucket's level at logged time `now`: its last level refilled at `per_minute`,
    at most `capacity` (None: a full bucket). Time that runs back (inputs of several
    partitions interleave) refills nothing."""
    if last is None:
        return float(capacity)
    elapsed = max(0, now - last.at)
    return min(float(capacity), last.level + elapsed * per_minute / _MINUTE_MS)


def rate_window_level(state: State, window: str, per_minute: int, now: int) -> float:
    """What a rate window holds at `now`: a minute's worth deep."""
    return refilled(RateWindow.load(state, window_key(window)), per_minute, per_minute, now)


def rate_take(limits: ScopeLimits, state: State, scopes: Sequence[str], tokens: int, now: int,
              levels_so_far: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """When a request may run (its rate windows' turn) and each window's level after it
    takes its request and its tokens (`levels_so_far`: what this decision took already)."""
    not_before = 0
    levels: dict[str, float] = {}
    for scope in scopes:
        for kind, per_minute, cost in (("rpm", limits.rpm_of(scope), 1),
                                       ("tpm", limits.tpm_of(scope), tokens)):
            if per_minute is None or (kind == "tpm" and cost == 0):
                continue
            window = f"{kind}:{scope}"
            level = levels_so_far.get(window)
            if level is None:
                level = rate_window_level(state, window, per_minute, now)
            if level < cost:
                # the time the window will have refilled what the request takes
                wait = (cost - level) * _MINUTE_MS / per_minute
                not_before = max(not_before, now + int(-(-wait // 1)))
            levels[window] = round(level - cost, 6)
    return not_before, levels


def evolve_levels(state: State, levels: Mapping[str, float], at: int) -> None:
    """The levels a fact carries, folded."""
    for window, level in sorted(levels.items()):
        RateWindow.moved_to(state, window_key(window), level, at)


def rate_windows(limits: ScopeLimits, state: State, now: int) -> list[dict[str, Any]]:
    """Each rate window in use: its limit a minute and what it holds at `now`."""
    out = []
    for key, _ in state.items(WINDOW_PREFIX):
        window = key.removeprefix(WINDOW_PREFIX)
        kind, scope = window.split(":", 1)
        per_minute = limits.rpm_of(scope) if kind == "rpm" else limits.tpm_of(scope)
        if per_minute is None:
            continue
        out.append({"window": window, "per_minute": per_minute,
                    "available": round(rate_window_level(state, window, per_minute, now), 1)})
    return out
