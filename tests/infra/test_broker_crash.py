"""The broker itself goes away mid-burst: SIGKILL and restart on the same data, then a whole
`down` / `up`. Nothing is lost, no effect is applied twice, no line item is charged twice,
and replay equals live state."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from onceflow.billing.worker import build_ledger, build_wallets
from onceflow.infra.broker import pid_alive, stop_pid
from onceflow.infra.observe import ProgressFollower
from onceflow.infra.stack import (
    broker_for,
    read_stack,
    stack_down,
    stack_up,
    start_stack_roles,
    write_stack,
)
from onceflow.schemas import (
    LedgerLineItem,
    SingleObjectCodec,
    WorkUnitNeedsOperator,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.runtime import fingerprint_partitions, replay_facts
from onceflow.streams.scheduler import SETTLED_STATES
from onceflow.streams.scheduler.worker import build_scheduler
from onceflow.streams.topics import TopicCatalog
from tests.agents.fixtures import effect_rows, fast_settings, unit
from tests.fixtures import events, live_fingerprint, submit_units, wait_for
from tests.infra.fixtures import role_stacks

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture
def stack(settings: OnceflowSettings, tmp_path: Path, request: pytest.FixtureRequest
          ) -> Iterator[OnceflowSettings]:
    """A stack of its own (its own Kafka, in its own data directory) that the test may kill.
    When the test failed, every role's threads say where they are before it goes down."""
    own = fast_settings(settings).model_copy(update={"stack_dir": tmp_path / "own-stack"})
    state, _topics, _ = stack_up(own)
    own = own.model_copy(update={"bootstrap_servers": state.bootstrap})
    start_stack_roles(own, agents=3, views=False, autoscale=False)
    yield own
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(role_stacks(own), file=sys.stderr)
    stack_down(own)


def _mixed(prefix: str, n: int, db: Path) -> list[WorkUnitSubmitted]:
    """n units: 60% pure cpu, 15% LLM, and 25% world-mutating tools of every class."""
    tool = {"db": str(db)}
    out: list[WorkUnitSubmitted] = []
    for i in range(n):
        wu, k = f"{prefix}-{i}", i % 20
        if k < 12:
            out.append(unit(wu, simulated_ms=5))
        elif k < 15:
            out.append(unit(wu, kind="llm_pod", effect="READ_ONLY_NONDET", prompt=f"q {i}"))
        elif k < 17:
            out.append(unit(wu, kind="tool", effect="WORLD_MUTATING", simulated_ms=10,
                            parameters=tool))
        elif k < 19:
            out.append(unit(wu, kind="tool", effect="WORLD_MUTATING", simulated_ms=10,
                            idempotency_class="token", parameters={**tool, "honour_key": "true"}))
        else:
            out.append(unit(wu, kind="tool", effect="WORLD_MUTATING", simulated_ms=10,
                            idempotency_class="readback", parameters=tool))
    return out


def _settled_count(follower: ProgressFollower, ids: list[str]) -> int:
    follower.poll()
    return sum(1 for i in ids if follower.progress.status.get(i) in SETTLED_STATES)


def _restart_broker(settings: OnceflowSettings) -> None:
    """SIGKILL the broker, as a crash would, and start it again on the same data."""
    state = read_stack(settings)
    assert state is not None
    os.kill(state.broker_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(state.broker_pid), timeout=10, interval=0.05,
             what="the broker to die")
    again = broker_for(settings).start(detach=True)
    assert again.process is not None and again.bootstrap == state.bootstrap
    state.broker_pid = again.process.pid
    write_stack(settings, state)


def _stop_roles(settings: OnceflowSettings) -> None:
    state = read_stack(settings)
    assert state is not None
    for pid in state.processes.values():
        stop_pid(pid, timeout=30)
    state.processes = {}
    write_stack(settings, state)


def test_the_broker_killed_and_restarted_mid_burst_loses_and_doubles_nothing(
        stack: OnceflowSettings, tmp_path: Path) -> None:
    db = tmp_path / "effects.sqlite"
    burst = _mixed("k", 1200, db)
    ids = [u.work_unit_id or "" for u in burst]
    submit_units(stack, burst)
    follower = ProgressFollower(stack)
    try:
        wait_for(lambda: _settled_count(follower, ids) >= 300, timeout=120, interval=0.05,
                 what="the burst to be under way")
        _restart_broker(stack)
        wait_for(lambda: _settled_count(follower, ids) == len(ids), timeout=240, interval=0.5,
                 what="every unit of the burst to settle after the broker's restart")
        # Then `down` and `up` in the middle of a second burst.
        second = _mixed("d", 400, db)
        second_ids = [u.work_unit_id or "" for u in second]
        submit_units(stack, second)
        wait_for(lambda: _settled_count(follower, second_ids) >= 100, timeout=120,
                 interval=0.05, what="the second burst to be under way")
    finally:
        follower.close()
    stack_down(stack)
    state, _topics, started = stack_up(stack)
    assert started and state.bootstrap == stack.bootstrap_servers
    start_stack_roles(stack, agents=3, views=False, autoscale=False)
    follower = ProgressFollower(stack)
    try:
        everything = ids + second_ids
        wait_for(lambda: _settled_count(follower, everything) == len(everything),
                 timeout=240, interval=0.5, what="every unit to settle after down / up")
        status = dict(follower.progress.status)
        accepted = dict(follower.progress.accepted_completions)
    finally:
        follower.close()
    units = burst + second
    catalog = TopicCatalog(stack)

    def billed() -> list[LedgerLineItem]:
        return [e for e in events(stack, catalog["ledger"].name) if isinstance(e, LedgerLineItem)]

    completed = [u for u in units if status[u.work_unit_id or ""] == "completed"]
    wait_for(lambda: {i.work_unit_id for i in billed()} >= {u.work_unit_id for u in completed},
             timeout=120, interval=1.0, what="every completed unit billed")
    _stop_roles(stack)

    # Every unit settled; a parked one is world-mutating work with no safe retry and says why.
    parked = {e.work_unit_id: e for e in events(stack, catalog["workunits"].name)
              if isinstance(e, WorkUnitNeedsOperator)}
    rows = effect_rows(db)
    for u in units:
        wu = u.work_unit_id or ""
        if u.effect != "WORLD_MUTATING":
            assert status[wu] == "completed" and accepted[wu] == 1, (wu, status[wu])
            continue
        assert rows[wu] <= 1, f"{wu} was applied {rows[wu]} times"
        if u.idempotency_class in ("token", "readback"):
            assert status[wu] == "completed" and rows[wu] == 1, (wu, status[wu], rows[wu])
        else:
            assert status[wu] in ("completed", "needs_operator"), (wu, status[wu])
            if status[wu] == "needs_operator":
                assert parked[wu].reason_code and parked[wu].reason, wu
    # No line item twice: one id each, and one charge per unit and kind of charge (a
    # completion fenced by a lease the outage ended is leakage: recorded, never billed).
    items = billed()
    assert len({i.line_item_id for i in items}) == len(items)
    per_charge = Counter((i.work_unit_id, i.line_item_type) for i in items if i.billed)
    assert max(per_charge.values()) == 1, per_charge.most_common(3)
    assert {wu for wu, _type in per_charge} == {u.work_unit_id for u in completed}
    assert all(i.leakage_reason for i in items if not i.billed)
    # Replay of each fact topic equals the live state the roles left.
    for name, build, topic in (("scheduler", build_scheduler, "workunits"),
                               ("ledger", build_ledger, "ledger"),
                               ("wallets", build_wallets, "wallets")):
        replayed = replay_facts(build(stack).reducer, stack, catalog[topic].name,  # type: ignore[index]
                                SingleObjectCodec())
        assert fingerprint_partitions({p: list(s.raw_items()) for p, s in replayed.items()}) \
            == live_fingerprint(stack.state_dir, name, stack.partitions), f"{name}: replay differs from live state"
