"""Helpers for the tests of members per role: who owns what, and the end-of-test account
every one of them closes with (settled once, billed once, no anomaly, replay equal)."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from onceflow.billing import cost_estimator
from onceflow.billing.worker import build_ledger, build_wallets
from onceflow.infra.observe import ProgressFollower, role_members
from onceflow.infra.roles import RoleProcess
from onceflow.schemas import (
    BillingAnomaly,
    LedgerLineItem,
    SlotGranted,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import read_topic_to_end
from onceflow.streams.limits.worker import build_limiter
from onceflow.streams.runtime import verify_replay
from onceflow.streams.runtime.facts import FACT_HEADER_MEMBER
from onceflow.streams.scheduler import SETTLED_STATES
from onceflow.streams.scheduler.worker import build_scheduler
from onceflow.streams.topics import TopicCatalog
from onceflow.streams.trust.worker import build_trust
from tests.fixtures import events, wait_for

__all__ = ["FactRecord", "assert_exactly_once", "fact_records", "log_events", "members_of",
           "owners", "sigkill", "wait_members"]


def members_of(settings: OnceflowSettings, group: str) -> dict[str, list[int]]:
    """The members of a role's group (`group`: its name after the topic prefix) and the
    partitions each owns now."""
    for g in role_members(settings):
        if g["group"] == group:
            return {m["member"]: m["partitions"] for m in g["members"]}
    return {}


def owners(settings: OnceflowSettings, group: str) -> dict[int, str]:
    return {p: m for m, ps in members_of(settings, group).items() for p in ps}


def wait_members(settings: OnceflowSettings, group: str, names: set[str],
                 partitions: int, timeout: float = 90.0) -> dict[str, list[int]]:
    """Wait until exactly `names` are the group's members and every partition is owned."""
    def settled() -> dict[str, list[int]] | None:
        now = members_of(settings, group)
        owned = sorted(p for ps in now.values() for p in ps)
        return now if set(now) == names and owned == list(range(partitions)) else None

    return wait_for(settled, timeout=timeout, interval=0.25,
                    what=f"{group} to be {sorted(names)} with every partition owned")


def sigkill(role: RoleProcess) -> None:
    os.kill(role.pid, signal.SIGKILL)
    role.process.wait(timeout=10)


def log_events(role: RoleProcess, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of a role's process with this `event`."""
    out = []
    for line in role.log_file.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@dataclass(frozen=True)
class FactRecord:
    partition: int
    offset: int
    member: str
    timestamp_ms: int


def fact_records(settings: OnceflowSettings, topic: str) -> Iterator[FactRecord]:
    """Each visible (committed) record of a fact topic with the member that wrote it."""
    for msg in read_topic_to_end(settings, topic):
        headers = dict(msg.headers() or [])
        member = headers.get(FACT_HEADER_MEMBER)
        yield FactRecord(msg.partition() or 0, msg.offset() or 0,
                         member.decode() if isinstance(member, bytes) else "?",
                         msg.timestamp()[1])


def assert_exactly_once(settings: OnceflowSettings, units: list[WorkUnitSubmitted], *,
                        limiter: bool = False, timeout: float = 180.0) -> Counter[str]:
    """Every unit settled once and, once billing caught up, billed once; no anomaly; no
    fact twice; each role's live state (every member's copy of every partition) equal
    to a replay of its facts. Returns the units by settled state."""
    catalog = TopicCatalog(settings)
    ids = [u.work_unit_id or "" for u in units]
    follower = ProgressFollower(settings)
    try:
        def all_settled() -> bool:
            follower.poll()
            return all(follower.progress.status.get(i) in SETTLED_STATES for i in ids)

        wait_for(all_settled, timeout=timeout, what="every unit to settle")
        status = dict(follower.progress.status)
        accepted = Counter(follower.progress.accepted_completions)
    finally:
        follower.close()
    states = Counter(status[i] for i in ids)
    completed = [i for i in ids if status[i] == "completed"]
    assert [i for i in completed if accepted[i] != 1] == [], "a unit completed twice"
    facts = events(settings, catalog["workunits"].name)
    twice = [k for k, n in Counter(f.event_id for f in facts).items() if n > 1]
    assert twice == [], f"{len(twice)} facts written twice"

    def billed() -> Counter[str] | None:
        items = [e for e in events(settings, catalog["ledger"].name)
                 if isinstance(e, LedgerLineItem) and e.billed
                 and e.source_event_type == "workunit.completed"]
        per_unit = Counter(e.work_unit_id or "" for e in items)
        return per_unit if all(per_unit[i] >= 1 for i in completed) else None

    per_unit = wait_for(billed, timeout=120, interval=0.5, what="billing to bill every unit")
    assert [i for i in completed if per_unit[i] != 1] == [], "a unit billed twice"
    anomalies = [e for e in events(settings, catalog["anomalies"].name)
                 if isinstance(e, BillingAnomaly)]
    assert anomalies == [], f"anomalies: {anomalies[:3]}"
    if limiter:
        grants = Counter((e.work_unit_id, e.attempt_index)
                         for e in events(settings, catalog["flow"].name)
                         if isinstance(e, SlotGranted))
        assert [k for k, n in grants.items() if n > 1] == [], "a slot granted twice"
    checks = [
        (build_scheduler(settings, estimator=cost_estimator(settings.billing)),
         catalog["workunits"].name),
        (build_ledger(settings), catalog["ledger"].name),
        (build_wallets(settings), catalog["wallets"].name),
        (build_trust(settings), catalog["trust"].name),
        (build_limiter(settings), catalog["flow"].name),
    ]
    for processor, topic in checks:
        check = verify_replay(processor.reducer, settings, topic)
        assert check.equal, f"{processor.reducer.name}: {check.first_difference()}"
    return states
