"""What must hold after every seed, each a function of the world's log and roles."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal

from onceflow.billing import Wallet
from onceflow.schemas import (
    BillingAnomaly,
    LedgerLineItem,
    LlmInvocationCompleted,
    SlotGranted,
    WalletUpdated,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitSubmitted,
)
from onceflow.streams.ids import idempotency_key_for
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.scheduler import SETTLED_STATES
from tests.simulation.world import World

__all__ = ["check_all", "unit_states"]


def unit_states(world: World) -> dict[str, str]:
    """Each unit's state as the scheduler's facts say (the read model `status` uses)."""
    return world.progress().status


def line_items(world: World) -> list[LedgerLineItem]:
    return [r.event for part in world.log.records[world.t["ledger"]] for r in part
            if isinstance(r.event, LedgerLineItem)]


def every_unit_ended(world: World, units: list[WorkUnitSubmitted]) -> None:
    submitted = {u.work_unit_id or "" for u in units}
    states = unit_states(world)
    lost = sorted(submitted - set(states))
    assert not lost, f"units lost (no fact about them): {lost}"
    stuck = {u: s for u, s in sorted(states.items()) if s not in SETTLED_STATES}
    assert not stuck, f"units stuck while healthy nodes exist: {stuck}"


def no_line_item_twice(world: World) -> None:
    items = line_items(world)
    twice = [i for i, n in Counter(li.line_item_id for li in items).items() if n > 1]
    assert not twice, f"line items charged twice: {twice}"
    cpu = Counter(li.work_unit_id or "" for li in items
                  if li.billed and li.line_item_type == "workunit_cpu"
                  and li.source_event_type == "workunit.completed")
    assert all(n == 1 for n in cpu.values()), f"units billed twice: {cpu}"
    completed = {u for u, s in unit_states(world).items() if s == "completed"}
    assert set(cpu) == completed, (
        f"completed but unbilled: {sorted(completed - set(cpu))}; billed but not "
        f"completed: {sorted(set(cpu) - completed)}")


def wallets_equal_their_line_items(world: World) -> None:
    latest: dict[str, WalletUpdated] = {}
    for part in world.log.records[world.t["wallets"]]:
        for r in part:
            if isinstance(r.event, WalletUpdated):
                latest[r.event.wallet_id] = r.event  # one writer per partial
    wallets = Wallet.combine([latest[k] for k in sorted(latest)])
    charged: dict[str, Decimal] = defaultdict(Decimal)
    for li in line_items(world):
        if li.billed:
            charged[li.tenant_id] += li.total_usd
    for tenant, total in sorted(charged.items()):
        wallet = wallets.get(f"tenant:{tenant}")
        assert wallet is not None and wallet.debit_usd == total, (
            f"wallet of {tenant}: {wallet and wallet.debit_usd} != line items {total}")


def replay_equals_live(world: World) -> None:
    for shell in (s for s in world.shells if s.recovery == "facts"):
        for p in range(shell.partitions):
            live = fingerprint_items(shell.states[p].raw_items())
            replayed = fingerprint_items(shell.rebuilt(p).raw_items())
            assert live == replayed, f"{shell.name}[{p}]: replay of its facts differs " \
                                     "from its live state"


def effects_at_most_once(world: World, units: list[WorkUnitSubmitted]) -> None:
    """No world-mutating effect applied twice; a completed one applied exactly once."""
    states = unit_states(world)
    for u in units:
        if u.effect != "WORLD_MUTATING":
            continue
        wu = u.work_unit_id or ""
        applied = world.outside.applied.get(idempotency_key_for(wu), 0)
        assert applied <= 1, f"{wu} ({u.idempotency_class}): effect applied {applied} times"
        if states.get(wu) == "completed" and world.resolved.get(wu) != "mark_done":
            assert applied == 1, f"{wu} ({u.idempotency_class}) completed, effect applied " \
                                 f"{applied} times"


def nothing_accepted_after_a_cancel(world: World) -> None:
    for partition in world.log.records[world.t["workunits"]]:
        cancelled: set[str] = set()
        for record in partition:
            e = record.event
            if isinstance(e, WorkUnitCancelled):
                cancelled.add(e.work_unit_id or "")
            elif isinstance(e, WorkUnitCompleted) and e.accepted:
                assert e.work_unit_id not in cancelled, \
                    f"{e.work_unit_id}: a result accepted after its cancel"


def tokens_billed_once(world: World) -> None:
    """Every LLM call of a unit that ended is in one token line item (billed, or leakage
    for a fenced attempt), and none is in two."""
    calls: dict[str, LlmInvocationCompleted] = {
        r.event.event_id: r.event for part in world.log.records[world.t["llm"]]
        for r in part if isinstance(r.event, LlmInvocationCompleted)}
    states = unit_states(world)
    items = Counter(li.source_event_id for li in line_items(world)
                    if li.line_item_type == "llm_tokens")
    for call_id, call in sorted(calls.items()):
        if states.get(call.work_unit_id or "") in ("completed", "failed", "cancelled"):
            assert items.get(call_id) == 1, \
                f"LLM call {call_id} of {call.work_unit_id} in {items.get(call_id, 0)} " \
                "token line items"


def limits_never_exceeded(world: World) -> None:
    assert not world.over_limit, f"limits exceeded: {world.over_limit[:5]}"


def prepaid_credit_never_exceeded(world: World) -> None:
    charged: dict[str, Decimal] = defaultdict(Decimal)
    for li in line_items(world):
        if li.billed:
            charged[li.tenant_id] += li.total_usd
    for tenant, credit in sorted(world.settings.billing.prepaid_credits.items()):
        assert charged[tenant] <= credit, \
            f"prepaid tenant {tenant} charged {charged[tenant]} beyond its credit {credit}"


def no_anomaly_found(world: World) -> None:
    """The anomaly checker, reading the same log, proves no broken promise; and it sends
    no finding twice, however often it restarts."""
    found = [r.event for part in world.log.records[world.anomalies.fact_topic] for r in part
             if isinstance(r.event, BillingAnomaly)]
    ids = Counter(f.event_id for f in found)
    assert all(n == 1 for n in ids.values()), f"a finding sent twice: {ids.most_common(1)}"
    flagged = [f"{f.check} {f.subject_id}: {f.message}" for f in found if f.severity == "flag"]
    assert not flagged, f"anomalies: {flagged[:3]}"


def session_limits_kept(world: World, units: list[WorkUnitSubmitted]) -> None:
    """No session was granted more steps, attempts or LLM calls than its limits allow."""
    by_unit = {u.work_unit_id: u for u in units}
    steps: dict[tuple[str, str], set[str]] = defaultdict(set)
    attempts: Counter[tuple[str, str]] = Counter()
    calls: Counter[tuple[str, str]] = Counter()
    for part in world.log.records[world.t["flow"]]:
        for r in part:
            if not isinstance(r.event, SlotGranted):
                continue
            unit = by_unit.get(r.event.work_unit_id)
            if unit is None or unit.session_limits is None:
                continue
            key = (unit.tenant_id, unit.execution_session_id)
            steps[key].add(unit.work_unit_id or "")
            attempts[key] += 1
            calls[key] += unit.kind == "llm_pod"
    for u in units:
        limits, key = u.session_limits, (u.tenant_id, u.execution_session_id)
        if limits is None:
            continue
        for name, used, most in (("steps", len(steps[key]), limits.max_steps),
                                 ("attempts", attempts[key], limits.max_attempts),
                                 ("LLM calls", calls[key], limits.max_llm_calls)):
            assert most is None or used <= most, (
                f"session {key}: {used} {name} granted, its limit is {most}")


def check_all(world: World, units: list[WorkUnitSubmitted]) -> None:
    no_anomaly_found(world)
    limits_never_exceeded(world)
    session_limits_kept(world, units)
    prepaid_credit_never_exceeded(world)
    every_unit_ended(world, units)
    no_line_item_twice(world)
    wallets_equal_their_line_items(world)
    effects_at_most_once(world, units)
    nothing_accepted_after_a_cancel(world)
    tokens_billed_once(world)
    replay_equals_live(world)
