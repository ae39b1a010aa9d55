"""Backoff with deterministic jitter: the same unit and attempt always wait the same."""

from __future__ import annotations

import hashlib

from onceflow.streams.scheduler.settings import SchedulerSettings

__all__ = ["retry_delay_ms"]


def retry_delay_ms(work_unit_id: str, failures: int, cfg: SchedulerSettings) -> int:
    """min(cap, base * 2^(k-1) + jitter), jitter in [0, ratio * exponential part).

    The jitter comes from a hash of (unit, attempt), never from a random
    generator, so replaying the scheduler's inputs reproduces every delay.
    """
    k = max(1, failures)
    exponential = cfg.retry_base_ms * (2 ** (k - 1))
    digest = hashlib.sha256(f"{work_unit_id}\x1f{k}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    jitter = int(exponential * cfg.retry_jitter_ratio * fraction)
    return int(min(cfg.retry_cap_ms, exponential + jitter))
