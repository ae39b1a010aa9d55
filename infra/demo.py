"""`onceflow demo`: the local stack, a burst of work, a live view, a summary."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, replace

from rich.console import Console
from rich.live import Live
from rich.table import Table

from onceflow.infra.observe import ProgressFollower
from onceflow.infra.stack import local_settings, stack_down, stack_up, start_stack_roles
from onceflow.schemas import SingleObjectCodec, WorkUnitSubmitted
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.scheduler import SETTLED_STATES, percentile
from onceflow.streams.topics.catalog import TopicCatalog

__all__ = ["PRESSURES", "DemoSpec", "demo_units", "run_demo"]

PROMPTS = (
    "Summarise the quarterly report in three bullet points.",
    "Translate 'every step durable' into French.",
    "List the risks of sending an email twice.",
    "Explain exactly-once accounting to a new engineer.",
)


@dataclass(frozen=True)
class DemoSpec:
    burst: int = 5_000
    kind: str = "mixed"
    llm_provider: str = "stub"
    agents: int = 3
    priority: str = "p2"
    region: str | None = None
    simulated_ms: int = 5
    timeout_s: float = 300.0
    keep: bool = False
    pressure: str = "none"


Pressure = str  # "none" | "low" | "high" | "critical" | "auto"
PRESSURES = ("none", "low", "high", "critical", "auto")

#: per pressure: waves of (share of the burst, simulated ms per cpu unit, seconds to spread
#: the wave over, seconds to wait before it)
_WAVES: dict[str, list[tuple[float, int, float, float]]] = {
    "none": [(1.0, -1, 0.0, 0.0)],
    "low": [(0.2, 5, 5.0, 0.0)],
    "high": [(1.0, 25, 0.0, 0.0)],
    "critical": [(1.0, 40, 0.0, 0.0), (0.6, 40, 2.0, 4.0)],
    "auto": [(0.2, 5, 4.0, 0.0), (1.0, 25, 0.0, 2.0), (1.0, 40, 0.0, 3.0), (0.4, 40, 2.0, 4.0)],
}


def demo_autoscaler(settings: OnceflowSettings) -> OnceflowSettings:
    """Windows of a second and short cooldowns, so scaling shows within a demo."""
    return settings.model_copy(update={"autoscaler": settings.autoscaler.model_copy(update={
        "window_ms": 1000, "scale_up_windows": 2, "scale_up_cooldown_ms": 3000,
        "scale_down_windows": 4, "scale_down_cooldown_ms": 8000, "critical_windows": 2,
        "open_windows": 3, "max_replicas": 6})})


def demo_units(spec: DemoSpec, run_id: str, now_ms: int) -> list[WorkUnitSubmitted]:
    units = []
    for i in range(spec.burst):
        llm = spec.kind == "llm_pod" or (spec.kind == "mixed" and i % 5 == 4)
        wu = f"demo-{run_id}-{i:06d}"
        tenant = f"tenant-{i % 3 + 1}"
        # 16 sessions per tenant; 16 and the LLM period (5) are coprime, so
        # every session mixes kinds and no session's cost stands out.
        session = f"sess-{run_id}-{tenant}-{(i // 3) % 16:02d}"
        units.append(WorkUnitSubmitted(
            event_id=f"{wu}-submitted", occurred_at=now_ms, tenant_id=tenant,
            execution_session_id=session, work_unit_id=wu,
            kind="llm_pod" if llm else "cpu",
            effect="READ_ONLY_NONDET" if llm else "PURE",
            priority=spec.priority,  # type: ignore[arg-type]
            region=spec.region, simulated_ms=0 if llm else spec.simulated_ms,
            prompt=PROMPTS[i % len(PROMPTS)] if llm else None,
            model="stub-small" if llm and spec.llm_provider == "stub" else None,
            correlation_id=session,
        ))
    return units


_STATE_ORDER = ("submitted", "waiting", "deferred", "scheduled", "running", "retrying",
                "completed", "failed", "rejected", "needs_operator", "cancelled")


def _capacity_line(settings: OnceflowSettings) -> str:
    from onceflow.infra.observe import read_capacity
    from onceflow.infra.stack import pid_alive, read_stack

    cap = read_capacity(settings)
    stack = read_stack(settings)
    agents = sorted(n for n, pid in (stack.processes if stack else {}).items()
                    if n.startswith("agent-") and pid_alive(pid))
    window = cap.get("window") or {}
    return (f"mode {cap['mode']}, replicas wanted "
            f"{cap['replicas'] if cap['replicas'] is not None else '-'}, agents running "
            f"{len(agents)} ({', '.join(a.removeprefix('agent-') for a in agents)})"
            + (f", last window: queue {window['queue']} (+{window['throttled']} held), "
               f"utilization {window['utilization']:.0%}" if window else ""))


def _live_table(follower: ProgressFollower, ids: list[str], started: float,
                capacity: str = "") -> Table:
    status = follower.progress.status
    counts: dict[str, int] = {}
    for i in ids:
        state = status.get(i, "in flight")
        counts[state] = counts.get(state, 0) + 1
    settled = sum(n for s, n in counts.items() if s in SETTLED_STATES)
    elapsed = time.monotonic() - started
    table = Table("state", "units", title=f"{settled}/{len(ids)} settled in {elapsed:.1f}s "
                  f"({settled / elapsed if elapsed else 0:,.0f} units/s)")
    for state in ("in flight", *_STATE_ORDER):
        if counts.get(state):
            table.add_row(state, str(counts[state]))
    if capacity:
        table.caption = capacity
    return table


def run_demo(settings: OnceflowSettings, spec: DemoSpec, console: Console) -> int:
    state, _statuses, _ = stack_up(settings)
    console.print(f"[bold]onceflow demo[/]: broker at {state.bootstrap}, topics ready")
    settings = local_settings(settings)
    if spec.pressure != "none":
        settings = demo_autoscaler(settings)
    code = 0
    try:
        roles = start_stack_roles(settings, agents=spec.agents, concurrency=4,
                                  region=None, llm_provider=spec.llm_provider)
        console.print("roles: " + ", ".join(f"{n} (pid {p})" for n, p in sorted(roles.items())))
        # its own units only: the history of earlier runs is not read again
        follower = ProgressFollower(settings, from_end=True)
        follower.poll(timeout=0.5)
        known = set(follower.progress.status)
        run_id = secrets.token_hex(3)
        producer = EventProducer(settings, SingleObjectCodec())
        topic = TopicCatalog(settings)["submissions"]
        started = time.monotonic()
        waves = _waves(spec, run_id)
        ids = [u.work_unit_id or "" for _, _, wave in waves for u in wave]
        deadline = started + spec.timeout_s
        console.print(f"submitting {len(ids)} units ({spec.kind}, priority {spec.priority}, "
                      f"LLM provider {spec.llm_provider}, pressure {spec.pressure}) in "
                      f"{len(waves)} wave(s)")

        def pending() -> int:
            status = follower.progress.status
            return sum(1 for i in ids if status.get(i) not in SETTLED_STATES)

        capacity, capacity_at = "", 0.0
        with Live(_live_table(follower, ids, started), console=console,
                  refresh_per_second=4, transient=True) as live:
            next_wave = started
            for delay, spread, wave in waves:
                next_wave += delay
                while time.monotonic() < next_wave:
                    follower.poll(timeout=0.25)
                    live.update(_live_table(follower, ids, started, capacity))
                pace = spread / max(1, len(wave))
                for n, u in enumerate(wave):
                    producer.send(topic, u)
                    if pace and n % 50 == 49:
                        producer.flush()
                        time.sleep(pace * 50)  # pacing the wave, as a client would
                producer.flush()
            while pending() and time.monotonic() < deadline:
                follower.poll(timeout=0.25)
                if spec.pressure != "none" and time.monotonic() - capacity_at > 1.0:
                    capacity, capacity_at = _capacity_line(settings), time.monotonic()
                live.update(_live_table(follower, ids, started, capacity))
        del producer  # flushed; no client should outlive the broker
        if spec.pressure != "none":
            from onceflow.infra.observe import read_capacity

            cap = read_capacity(settings)
            console.print(_capacity_line(settings))
            console.print(f"scale requests: {', '.join(cap['scale_requests']) or 'none'}; "
                          f"admission modes: {' -> '.join(['OPEN', *cap['modes']])}")
        elapsed = time.monotonic() - started
        left = pending()
        _summary(console, follower, ids, known, elapsed)
        settled = {i: follower.progress.status.get(i) for i in ids}
        follower.close()
        if left:
            console.print(f"[bold red]{left} unit(s) did not settle within {spec.timeout_s}s[/]")
            code = 1
        billed = _billing_summary(settings, console, settled, started, deadline)
        code = code or (0 if billed else 1)
    finally:
        if not spec.keep:
            for name in stack_down(settings):
                console.print(f"stopped {name}")
        else:
            console.print("the stack keeps running: `onceflow status`, `onceflow down`")
    return code


def _waves(spec: DemoSpec, run_id: str) -> list[tuple[float, float, list[WorkUnitSubmitted]]]:
    """The pressure profile's waves: (delay before, seconds spread over, units)."""
    out = []
    for n, (share, simulated_ms, spread, delay) in enumerate(_WAVES[spec.pressure]):
        wave_spec = replace(spec, burst=max(1, int(spec.burst * share)),
                            simulated_ms=spec.simulated_ms if simulated_ms < 0 else simulated_ms)
        out.append((delay, spread, demo_units(wave_spec, f"{run_id}w{n}",
                                              int(time.time() * 1000))))
    return out


def _summary(console: Console, follower: ProgressFollower, ids: list[str], known: set[str],
             elapsed: float) -> None:
    progress = follower.progress
    mine = {i: progress.status.get(i, "unknown") for i in ids}
    counts: dict[str, int] = {}
    for s in mine.values():
        counts[s] = counts.get(s, 0) + 1
    table = Table("state", "units", title="work units by state")
    for name, n in sorted(counts.items()):
        table.add_row(name, str(n))
    console.print(table)
    lat = [float(progress.latency_ms[i]) for i in ids if i in progress.latency_ms]
    console.print(
        f"latency submit -> settled: p50 {percentile(lat, 50):.0f} ms, "
        f"p95 {percentile(lat, 95):.0f} ms, p99 {percentile(lat, 99):.0f} ms "
        f"over {len(lat)} completed units; {len(ids) / elapsed:,.0f} units/s end to end")
    nodes = Table("node", "completed", title="work per node")
    for node, n in sorted(progress.completed_by_node.items()):
        nodes.add_row(node, str(n))
    console.print(nodes)
    if progress.rejected_completions:
        console.print(f"{progress.rejected_completions} completion(s) from fenced attempts "
                      "were rejected (never billed)")


def _billing_summary(settings: OnceflowSettings, console: Console,
                     settled: dict[str, str | None], started: float, deadline: float) -> bool:
    """Wait until the ledger has billed every settled unit and the wallets folded it all,
    then show the wallets, the breakdown and what reconciliation finds."""
    from onceflow.billing import BillingFollower, read_anomalies, read_billing_records, reconcile
    from onceflow.infra.billing_report import (
        anomaly_table,
        breakdown_tables,
        print_all,
        wallet_table,
    )

    billable = [i for i, s in settled.items() if s in ("completed", "failed", "cancelled")]
    follower = BillingFollower(settings, only=set(settled))
    try:
        def caught_up() -> bool:
            return (all(i in follower.settled for i in billable)
                    and follower.folded_into_wallets() == follower.line_items)

        give_up = max(deadline, time.monotonic() + 60)
        while not caught_up() and time.monotonic() < give_up:
            follower.poll(timeout=0.25)
        if not caught_up():
            missing = sum(1 for i in billable if i not in follower.settled)
            console.print(f"[bold red]billing did not catch up: {missing} unit(s) unbilled, "
                          f"{follower.line_items - follower.folded_into_wallets()} line item(s) "
                          "not in a wallet[/]")
            return False
        elapsed = time.monotonic() - started
        console.print(f"billed: {len(billable)} settled units, {follower.line_items} line items, "
                      f"{len(billable) / elapsed:,.0f} units/s submit -> billed")
        wallets = follower.wallets()
        tenants = [w for w in wallets.values() if not w.execution_session_id]
        console.print(wallet_table(sorted(tenants, key=lambda w: w.tenant_id),
                                   title="wallets by tenant (all runs)"))
        print_all(console, breakdown_tables(follower, title="this run's billing breakdown"))
    finally:
        follower.close()
    findings = [*read_anomalies(settings),
                *reconcile(read_billing_records(settings), settings.billing)]
    if not findings:
        console.print("anomaly checks: nothing found (streaming checks and reconciliation)")
        return True
    console.print(anomaly_table(findings[:10]))
    counts: dict[str, int] = {}
    for f in findings:
        counts[f"{f.check} ({f.severity})"] = counts.get(f"{f.check} ({f.severity})", 0) + 1
    console.print(f"{len(findings)} finding(s): "
                  + ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
                  + "; `onceflow anomalies --reconcile` records and lists them all")
    return True
