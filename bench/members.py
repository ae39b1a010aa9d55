"""What transactions and members cost: the burst and the latency at 200 units/s with Kafka
transactions on and off in the same run, and how long a scheduler partition holding
100,000 units takes to restore on the member it moves to.

    python -m bench.run --only members
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onceflow.schemas import SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.topics import TopicCatalog, create_topics

__all__ = ["hop_profile", "members_rates", "restore_rate"]

#: a unit's hops, in order, as (topic, event type) of the record each hop writes
_HOPS = (("workunits", "WorkUnitScheduled"), ("reports", "ClaimRequested"),
         ("workunits", "ClaimGranted"), ("reports", "WorkUnitResultReported"),
         ("workunits", "WorkUnitCompleted"))


def _burst_and_paced(settings: OnceflowSettings, stack_dir: Path, prefix: str, n: int,
                     rate: int, seconds: float) -> dict[str, Any]:
    from bench.run import _execution_cluster, _paced, bursts
    from onceflow.infra.observe import ProgressFollower
    from onceflow.infra.roles import stop_roles

    settings, roles = _execution_cluster(settings, stack_dir, prefix)
    try:
        producer = EventProducer(settings, SingleObjectCodec())
        topic = TopicCatalog(settings)["submissions"]
        follower = ProgressFollower(settings, only=frozenset({"workunit.completed"}))
        paced = _paced(producer, topic, follower, rate, seconds, f"{prefix}paced")
        paced["hops_p50_ms"] = hop_profile(settings, f"{prefix}paced")
        burst = bursts(producer, topic, follower, n, f"{prefix}burst")
        follower.close()
        return {"burst": burst, "paced": paced}
    finally:
        stop_roles(roles)


def hop_profile(settings: OnceflowSettings, tag: str) -> dict[str, float]:
    """Where a unit's latency goes: for the units whose ids start with `tag`, the median
    time from the record of one hop to the next's, by the records' Kafka timestamps (each
    stamped when its writer produced it, so a hop includes the writer's commit before
    it and the reader's fetch)."""
    from collections import defaultdict

    from onceflow.streams.kafka import read_topic_to_end
    from onceflow.streams.scheduler import percentile

    codec = SingleObjectCodec()
    catalog = TopicCatalog(settings)
    stamps: dict[str, dict[str, int]] = defaultdict(dict)
    for name in ("submissions", "workunits", "reports"):
        for msg in read_topic_to_end(settings, catalog[name].name):
            if msg.value() is None:
                continue
            event = codec.decode(msg.value())  # type: ignore[arg-type]
            wu = getattr(event, "work_unit_id", None) or ""
            if wu.startswith(tag):
                stamps[wu].setdefault(f"{name}:{type(event).__name__}", msg.timestamp()[1])
    out: dict[str, float] = {}
    before = "submissions:WorkUnitSubmitted"
    for topic, event_type in _HOPS:
        key = f"{topic}:{event_type}"
        gaps = [float(s[key] - s[before]) for s in stamps.values() if key in s and before in s]
        out[f"{before.split(':')[1]} -> {event_type}"] = percentile(gaps, 50) if gaps else -1.0
        before = key
    return out


def restore_rate(settings: OnceflowSettings, work: Path, units: int) -> dict[str, Any]:
    """A scheduler partition holding `units` admitted units (no node to run them), then a
    member with no state for it restores it from its fact topic: the time it took."""
    import threading

    from bench.run import _cpu_units
    from onceflow.billing import cost_estimator
    from onceflow.infra.observe import ProgressFollower
    from onceflow.streams.scheduler.worker import build_scheduler

    settings = settings.model_copy(update={
        "topic_prefix": "bench.restore.", "partitions": 1, "state_dir": work / "restore-a",
        "stack_dir": work / "restore"})
    create_topics(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    topic = TopicCatalog(settings)["submissions"]
    batch = _cpu_units(units, "restore")
    ids = {u.work_unit_id or "" for u in batch}
    estimator = cost_estimator(settings.billing)
    first = build_scheduler(settings, estimator=estimator)
    stop = threading.Event()
    thread = threading.Thread(target=first.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    for u in batch:
        producer.send(topic, u)
    producer.flush()
    follower = ProgressFollower(settings)
    deadline = time.monotonic() + 900
    while sum(1 for i in ids if i in follower.progress.status) < units:
        follower.poll(timeout=0.5)
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler did not admit every unit")
    follower.close()
    stop.set()
    thread.join(60)
    # The member the partition moves to: no state of its own for it.
    moved = settings.model_copy(update={"state_dir": work / "restore-b"})
    ready = threading.Event()
    second = build_scheduler(moved, estimator=estimator, on_ready=ready.set)
    stop2 = threading.Event()
    thread2 = threading.Thread(target=second.run, kwargs={"stop": stop2}, daemon=True)
    thread2.start()
    ready.wait(600)
    stop2.set()
    thread2.join(60)
    seconds, facts = second.restores[0]
    return {"units_in_partition": units, "facts_folded": facts,
            "restore_s": round(seconds, 3), "facts_per_s": round(facts / seconds),
            "target_s": 5, "met": seconds <= 5}


def members_rates(settings: OnceflowSettings, stack_dir: Path, n: int, rate: int,
                  seconds: float, restore_units: int) -> dict[str, Any]:
    on = _burst_and_paced(settings.model_copy(update={"transactions": True}), stack_dir,
                          "bench.txn.", n, rate, seconds)
    off = _burst_and_paced(settings.model_copy(update={"transactions": False}), stack_dir,
                           "bench.notxn.", n, rate, seconds)
    cost = 1 - on["burst"]["units_per_s"] / off["burst"]["units_per_s"]
    restore = restore_rate(settings, stack_dir, restore_units)
    paced = on["paced"]
    return {
        "transactions": on, "without_transactions": off,
        "transaction_cost_of_burst": round(cost, 3),
        "restore_scheduler_partition": restore,
        "targets": {"transaction_cost_at_most": 0.15, "p50_ms_at_200_per_s": 10,
                    "p99_ms_at_200_per_s": 30, "restore_s_100k_units": 5},
        "targets_met": {
            "transaction_cost_at_most": cost <= 0.15,
            "p50_ms_at_200_per_s": paced["latency_p50_ms"] <= 10,
            "p99_ms_at_200_per_s": paced["latency_p99_ms"] <= 30,
            "restore_s_100k_units": restore["met"],
        },
    }
