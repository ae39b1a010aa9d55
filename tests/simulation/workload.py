"""What one seed runs: a workload and its faults, drawn from the seed's random source."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from onceflow.schemas import (
    ContentRef,
    ControlAction,
    ControlHumanInputSubmitted,
    ControlRequested,
    ControlScope,
    SessionLimits,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from tests.simulation.invariants import check_all
from tests.simulation.world import Attempt, Faults, World

__all__ = ["SeedResult", "play_seed", "run_seed"]

TENANTS = ("acme", "globex", "initech")
#: (kind, effect, idempotency class): every kind of unit the agents run
SHAPES: tuple[tuple[str, str, str], ...] = (
    ("cpu", "PURE", "none"), ("llm_pod", "PURE", "none"), ("tool", "PURE", "none"),
    ("tool", "WORLD_MUTATING", "none"), ("tool", "WORLD_MUTATING", "token"),
    ("tool", "WORLD_MUTATING", "readback"), ("input", "PURE", "none"),
    ("cpu", "WORLD_MUTATING", "none"), ("cpu", "WORLD_MUTATING", "token"),
    ("llm_pod", "WORLD_MUTATING", "none"),
)
#: how an attempt ends, by weight: most complete; some die at every point that matters
OUTCOMES = (("completed", 70), ("vanish", 6), ("handler_error", 6), ("node_timeout", 3),
            ("die_after_stage", 5), ("die_after_apply", 5), ("vanish_after_call", 5),
            ("provider_429", 5))


@dataclass(frozen=True)
class SeedResult:
    seed: int
    units: int
    crashes: int
    controls: int
    records: int
    #: partitions that moved to another member (a deposed member went on for a while)
    moves: int = 0


def draw_units(world: World) -> list[WorkUnitSubmitted]:
    rng = world.rng
    units: list[WorkUnitSubmitted] = []
    by_session: dict[tuple[str, str], list[str]] = {}
    limits: dict[tuple[str, str], SessionLimits | None] = {}
    for i in range(rng.randint(1, 10)):
        tenant = rng.choice(TENANTS)
        session = f"s{rng.randint(0, 2)}"
        kind, effect, idem = rng.choice(SHAPES)
        earlier = by_session.setdefault((tenant, session), [])
        depends = sorted(rng.sample(earlier, rng.randint(0, min(2, len(earlier)))))
        wu = f"u{i}"
        extra: dict[str, Any] = {}
        if kind == "llm_pod":
            extra = {"prompt": f"prompt {i} " + "words " * rng.randint(0, 200), "model": "stub"}
            if rng.random() < 0.5:
                extra["parameters"] = {"max_tokens": str(rng.randint(1, 400))}
        if world.settings.limits.session_budgets and rng.random() < 0.5:
            extra["session_budget_usd"] = Decimal(rng.choice(["0.001", "0.01"]))
        if world.settings.limits.session_budgets:
            if (tenant, session) not in limits:  # a session's limits, on each of its units
                limits[tenant, session] = SessionLimits(
                    max_steps=rng.randint(1, 3), max_attempts=rng.randint(1, 5),
                    max_llm_calls=rng.randint(1, 2), on_limit=rng.choice(["park", "cancel"]),
                ) if rng.random() < 0.5 else None
            if limits[tenant, session] is not None:
                extra["session_limits"] = limits[tenant, session]
        if effect == "WORLD_MUTATING" and rng.random() < 0.3:
            extra.update(requires_approval=True,
                         approval_timeout_ms=rng.choice([5_000, 20_000]))
        if kind == "input":  # a person's answer, until a deadline; some have a default
            extra.update(prompt="your answer?", approval_timeout_ms=rng.choice([5_000, 20_000]))
            if rng.random() < 0.5:
                extra["input_ref"] = _answer(f"default {i}")
        units.append(WorkUnitSubmitted(
            event_id=f"sub-{i}", occurred_at=world.now, tenant_id=tenant,
            execution_session_id=session, work_unit_id=wu, kind=kind,  # type: ignore[arg-type]
            effect=effect, idempotency_class=idem,  # type: ignore[arg-type]
            handler="effects.append" if kind == "tool" else None,
            max_attempts=rng.randint(1, 4), lease_ms=rng.choice([2_000, 30_000]),
            simulated_ms=rng.randint(0, 50), depends_on=depends, **extra))
        earlier.append(wu)
    if rng.random() < 0.1:  # a step whose parent nobody submits: it fails unknown_parent
        units.append(WorkUnitSubmitted(
            event_id="sub-orphan", occurred_at=world.now, tenant_id=TENANTS[0],
            execution_session_id="s9", work_unit_id="orphan", depends_on=["ghost"]))
    if rng.random() < 0.1:  # two steps that wait on each other: they fail depends_on_cycle
        for a, b in (("cyc-a", "cyc-b"), ("cyc-b", "cyc-a")):
            units.append(WorkUnitSubmitted(
                event_id=f"sub-{a}", occurred_at=world.now, tenant_id=TENANTS[1],
                execution_session_id="s9", work_unit_id=a, depends_on=[b]))
    return units


def _answer(text: str) -> ContentRef:
    """A person's answer as the content store would hold it."""
    data = text.encode()
    return ContentRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def _control(world: World, n: int, action: ControlAction, scope: ControlScope,
             **target: Any) -> ControlRequested:
    return ControlRequested(event_id=f"ctl-{n}", occurred_at=world.now, action=action,
                            scope=scope, requested_by="sim", reason="simulated",
                            broadcast=scope != "unit", **target)


@lru_cache(maxsize=1)
def _base_settings() -> OnceflowSettings:
    return OnceflowSettings(partitions=3)


@lru_cache(maxsize=256)
def _settings(limits: tuple[tuple[str, Any], ...], credits: tuple[tuple[str, str], ...],
              touchy: bool, horizon_ms: int) -> OnceflowSettings:
    base = _base_settings()
    update: dict[str, Any] = {
        # a short horizon drops marks after a few dozen decisions: enough for the
        # simulated crashes, whose windows are shorter (checkpoints come every few steps)
        "retention_horizon_ms": horizon_ms, "dedupe_min_marks": 40,
        # a session idle an hour is over (longer than any seed's session lives)
        "limits": base.limits.model_copy(update={**dict(limits),
                                                 "session_idle_ms": 3_600_000}),
        "billing": base.billing.model_copy(update={
            "prepaid_credits": {t: Decimal(c) for t, c in credits}})}
    if touchy:
        # breakers that open after a few failures, admission that throttles at a small
        # queue: so that seeds exercise them
        update["trust"] = base.trust.model_copy(update={
            "breaker_min_attempts": 3, "breaker_timeouts": 2, "breaker_open_ms": 5_000,
            "breaker_close_after": 1})
        update["autoscaler"] = base.autoscaler.model_copy(update={
            "window_ms": 500, "throttle_queue": 3, "open_queue": 1, "open_windows": 1})
    return base.model_copy(update=update)


def draw_settings(rng: random.Random) -> OnceflowSettings:
    """Concurrency limits, prepaid credit and session budgets, or none of them."""
    limits: dict[str, Any] = {}
    if rng.random() < 0.3:
        limits["global_concurrency"] = rng.randint(1, 3)
    if rng.random() < 0.2:
        limits["tenant_concurrency"] = rng.randint(1, 2)
    if rng.random() < 0.2:
        limits["session_budgets"] = True
    credits = {}
    if rng.random() < 0.3:
        credits[rng.choice(TENANTS)] = rng.choice(["0.002", "0.02", "0.2"])
    # a week (nothing is forgotten within a seed), or seconds: settled units and dedupe
    # marks are forgotten while the seed runs, and its submissions are delivered again
    week = _base_settings().retention_horizon_ms
    horizon = rng.choice([week, week, 3_000, 20_000])
    return _settings(tuple(sorted(limits.items())), tuple(sorted(credits.items())),
                     rng.random() < 0.3, horizon)


def run_seed(seed: int) -> SeedResult:
    """Run one seed to quiescence and check every invariant (AssertionError: violated)."""
    world, units, controls = play_seed(seed)
    check_all(world, units)
    return SeedResult(seed, len(units), sum(s.crashes for s in world.shells), controls,
                      sum(len(p) for parts in world.log.records.values() for p in parts),
                      sum(s.moves for s in world.shells))


def play_seed(seed: int) -> tuple[World, list[WorkUnitSubmitted], int]:
    """Run one seed to quiescence: its world, the units it submitted, how many controls."""
    rng = random.Random(seed)
    world = World(seed, draw_settings(rng), rng)
    for n in range(rng.randint(1, 3)):
        world.add_agent(f"n{n + 1}", skew_ms=rng.randint(-200, 200))
    units = draw_units(world)
    duplicate = rng.random() < 0.3
    for u in units:
        world.submit(u)
        if duplicate and rng.random() < 0.5:
            world.submit(u)  # the same submission again: one unit
    # Transactions and members moving draw from a source of their own, so that the rest
    # of a seed draws what it drew before they were simulated.
    members = random.Random(f"members-{seed}")
    transactional = members.random() < 0.5
    world.transactions(transactional)
    faults = Faults(checkpoint=rng.choice([0.05, 0.3, 1.0]),
                    crash=rng.choice([0.0, 0.0, 0.01, 0.05]),
                    keep_state=rng.random() < 0.5,
                    clock_jump=rng.choice([0.0, 0.0, 0.0, 0.02]),
                    move=members.choice([0.0, 0.005, 0.02, 0.05]) if transactional else 0.0,
                    moves=members)
    names = [o for o, _ in OUTCOMES]
    weights = [w for _, w in OUTCOMES]

    def outcome(attempt: Attempt) -> str:
        drawn = rng.choices(names, weights)[0]
        if drawn == "provider_429" and attempt.scheduled.kind != "llm_pod":
            return "completed"  # only a provider answers 429
        return drawn

    # Operators act while the work runs: cancels, pauses (resumed before the end),
    # approvals and denials.
    paused: list[ControlRequested] = []
    controls = 0
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        world.run(steps=rng.randint(10, 120), faults=faults, outcome=outcome)
        u = rng.choice(units)
        controls += 1
        what = rng.random()
        if what < 0.3:
            world.control(_control(world, controls, "cancel", "unit", tenant_id=u.tenant_id,
                                   work_unit_id=u.work_unit_id))
        elif what < 0.45:
            world.control(_control(world, controls, "cancel", "session",
                                   tenant_id=u.tenant_id,
                                   execution_session_id=u.execution_session_id))
        elif what < 0.7:
            c = _control(world, controls, "pause", "session", tenant_id=u.tenant_id,
                         execution_session_id=u.execution_session_id)
            world.control(c)
            paused.append(c)
        elif u.kind == "input":  # an answer, or one its schema refuses
            world.control(ControlHumanInputSubmitted(
                event_id=f"ctl-{controls}", occurred_at=world.now, tenant_id=u.tenant_id,
                execution_session_id=u.execution_session_id, work_unit_id=u.work_unit_id,
                prompt_id=u.work_unit_id or "", input_ref=_answer(f"answer {controls}"),
                submitted_by="sim", schema_error=rng.choice(["", "", "not an integer"])))
        else:
            world.control(_control(world, controls, rng.choice(["approve", "deny"]), "unit",
                                   tenant_id=u.tenant_id, work_unit_id=u.work_unit_id))
    world.run(steps=rng.randint(50, 300), faults=faults, outcome=outcome)
    for c in paused:
        controls += 1
        world.control(c.model_copy(update={"event_id": f"ctl-{controls}", "action": "resume",
                                           "occurred_at": world.now}))
    world.settle(outcome=lambda _: "completed")
    horizon = world.settings.retention_horizon_ms
    if horizon < 60_000:
        # Long after: settled units are forgotten, then a consumer reset delivers some
        # submissions again (their original events): none may run a second time.
        world.forget(2 * horizon + 1_000)
        for u in rng.sample(units, k=max(1, len(units) // 3)):
            world.submit(u)
        world.settle(outcome=lambda _: "completed")
        # and a horizon more, in which what a late node reported is let go
        if world.holds_left():
            world.forget(horizon + 1_000)
    return world, units, controls
