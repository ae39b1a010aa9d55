"""Dedupe marks are kept for at least one retention horizon of the partition's logged
time (and a minimum count of later marks), at most two: filed by generation, a whole
generation goes at once. The same rule in memory and in RocksDB, so replays and live
state still compare byte for byte."""

from __future__ import annotations

from pathlib import Path

from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState, open_partition_store
from onceflow.streams.state.serde import seen_key

H = 1_000


def test_a_mark_is_found_for_a_horizon_and_gone_after_two(tmp_path: Path) -> None:
    store = open_partition_store(tmp_path, "p", 0, horizon_ms=H)
    store.mark_seen("early", at=5 * H + 10)
    store.mark_seen("late", at=5 * H + 990)
    store.checkpoint(1)
    store.mark_seen("next", at=6 * H + 1)  # a new generation: the marks before still count
    assert store.has_seen("early") and store.has_seen("late") and store.has_seen("next")
    store.checkpoint(2)
    store.mark_seen("after", at=7 * H + 1)  # two generations on: the first is dropped
    assert not store.has_seen("early") and not store.has_seen("late")
    assert store.has_seen("next") and store.has_seen("after")
    store.checkpoint(3)
    store.close()
    reopened = open_partition_store(tmp_path, "p", 0, horizon_ms=H)
    assert reopened.clock == 7 * H + 1
    assert not reopened.has_seen("early") and reopened.has_seen("next")
    assert sorted(k for k, _ in reopened.raw_items()) == [
        seen_key(2, "next"), seen_key(3, "after")]


def test_marks_on_disk_stay_bounded_however_long_the_partition_runs(tmp_path: Path) -> None:
    store = open_partition_store(tmp_path, "p", 0, horizon_ms=H)
    counts = []
    for i in range(20_000):
        store.mark_seen(f"ev-{i}", at=i)  # one input per ms: 1,000 per horizon
        if i % 500 == 499:
            store.checkpoint(i)
            counts.append(sum(1 for _ in store.raw_items()))
    assert max(counts) <= 2 * H
    assert counts[-1] >= H  # at least a horizon's worth is always there


def test_memory_and_rocksdb_keep_the_same_marks(tmp_path: Path) -> None:
    store = open_partition_store(tmp_path, "p", 0, horizon_ms=H)
    mem = MemoryState(horizon_ms=H)
    for i in range(3_000):
        at = i * 3 - (i % 7) * 50  # not in order: a fact's time may be behind the clock
        store.mark_seen(f"ev-{i}", at=max(at, 0))
        mem.mark_seen(f"ev-{i}", at=max(at, 0))
        if i % 97 == 0:
            store.checkpoint(i)
    assert fingerprint_items(store.raw_items()) == fingerprint_items(mem.raw_items())
    assert mem.has_seen("ev-2999") and not mem.has_seen("ev-1")
    assert store.has_seen("ev-2999") and not store.has_seen("ev-1")


def test_a_clock_that_jumps_a_horizon_ahead_drops_nothing_a_crash_may_deliver_again(
        tmp_path: Path) -> None:
    store = open_partition_store(tmp_path, "p", 0, horizon_ms=H, min_marks=100)
    for i in range(300):
        store.mark_seen(f"ev-{i}", at=5 * H + i)
    store.checkpoint(1)
    store.mark_seen("from-the-future", at=50 * H)  # one node's clock is far ahead
    for i in range(300, 330):
        store.mark_seen(f"ev-{i}", at=5 * H + i)  # a crash window's worth of inputs
    # every input with fewer than 100 marks after it is still known
    assert all(store.has_seen(f"ev-{i}") for i in range(200, 330))
    for i in range(330, 600):  # once enough inputs were decided since, the jump counts
        store.mark_seen(f"ev-{i}", at=5 * H + i)
    store.mark_seen("later", at=51 * H)
    assert not store.has_seen("ev-0") and store.has_seen("ev-599")


def test_a_store_kept_with_another_horizon_says_so_rather_than_be_misread(tmp_path: Path) -> None:
    store = open_partition_store(tmp_path, "p", 0, horizon_ms=H)
    store.set("x", 1)
    store.mark_seen("ev", at=3 * H)
    store.checkpoint(5)
    store.close()
    same = open_partition_store(tmp_path, "p", 0, horizon_ms=H)
    assert same.get("x") == 1 and same.fact_offset() == 5
    same.close()
    other = open_partition_store(tmp_path, "p", 0, horizon_ms=2 * H)
    assert other.outdated  # the shell wipes it and folds the fact topic again


def test_a_store_kept_in_another_state_layout_is_rebuilt(tmp_path: Path) -> None:
    """A release that changes a reducer's state (the limiter's, typed in release 6) names
    a new layout: a store kept by the release before says so, and the shell refolds."""
    from onceflow.streams.limits import Limiter
    from onceflow.streams.scheduler import Scheduler

    assert Limiter.state_layout and Scheduler.state_layout
    old = open_partition_store(tmp_path, "limiter", 0, horizon_ms=H)
    old.set("x", 1)
    old.checkpoint(5)
    old.close()
    new = open_partition_store(tmp_path, "limiter", 0, horizon_ms=H,
                               layout=Limiter.state_layout)
    assert new.outdated
    new.close()
    again = open_partition_store(tmp_path, "limiter", 0, wipe=True, horizon_ms=H,
                                 layout=Limiter.state_layout)
    again.set("x", 2)
    again.checkpoint(6)
    again.close()
    assert not open_partition_store(tmp_path, "limiter", 0, horizon_ms=H,
                                    layout=Limiter.state_layout).outdated
