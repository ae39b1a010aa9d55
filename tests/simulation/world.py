"""A deterministic world for the pure reducers: a simulated log with partitions, shells
that behave like the batched shell (dedupe by event id, facts before offsets, state
rebuilt from the fact topic after a crash, routed outputs sent again for facts after the
last checkpoint), simulated node agents, and a simulated clock, all driven by one seeded
random source. Nothing here reads the wall clock or touches a broker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from onceflow.autoscaler import CapacityController
from onceflow.billing import (
    AnomalyChecker,
    Ledger,
    WalletFolder,
    cost_estimator,
    load_price_book,
)
from onceflow.schemas import (
    ClaimGranted,
    ClaimRejected,
    ClaimRequested,
    ClockTick,
    ControlOperatorResolved,
    ControlRequested,
    EffectStaged,
    Event,
    LlmInvocationCompleted,
    LlmInvocationFailed,
    NodeHeartbeat,
    SessionLimitCrossed,
    WorkUnitCancelled,
    WorkUnitFailureReported,
    WorkUnitResultReported,
    WorkUnitScheduled,
    estimated_input_tokens,
    estimated_output_tokens,
    max_tokens_of,
    stages_effect,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.ids import caused_by, idempotency_key_for
from onceflow.streams.limits import Limiter, limiter_needed
from onceflow.streams.scheduler import SETTLED_STATES, Scheduler, UnitProgress
from onceflow.streams.state import MemoryState
from onceflow.streams.topics.catalog import TopicCatalog, partition_for
from onceflow.streams.trust import TrustScorer
from onceflow.streams.types import Reducer, Routed

__all__ = ["TRACE", "Agent", "Record", "Shell", "SimLog", "World"]

#: when a list, every record appended is described in it, in order (a seed's trace)
TRACE: list[str] | None = None

#: whether a member the group moved on from is fenced (its transaction can never commit);
#: off only to show the simulation finds the bug that fencing prevents
FENCING = True


@dataclass(frozen=True)
class Record:
    """One record of a topic partition: the event, and the input that caused it (a fact)."""

    event: Event
    cause: str = ""


class SimLog:
    """Topics of partitions of records; appends only."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions
        self.records: dict[str, list[list[Record]]] = {
            t: [[] for _ in range(n)] for t, n in partitions.items()}

    def append(self, topic: str, event: Event, partition: int | None = None,
               cause: str = "") -> None:
        n = self.partitions[topic]
        p = partition_for(event.entity_id(), n) if partition is None else partition
        self.records[topic][p].append(Record(event, cause))
        if TRACE is not None:
            TRACE.append(f"{topic}[{p}]@{len(self.records[topic][p]) - 1} {_describe(event)}")


def _describe(event: Event) -> str:
    fields = {k: v for k, v in event.model_dump(mode="json").items()
              if k not in ("event_id", "event_type", "schema_version", "causation_id",
                           "correlation_id") and v not in (None, "", [], {}, 0, False)}
    return f"{event.event_type} " + " ".join(f"{k}={v}" for k, v in list(fields.items())[:9])


@dataclass
class Shell:
    """A role's partitions, run the way the batched shell runs them."""

    name: str
    reducer: Reducer
    inputs: list[str]
    fact_topic: str
    log: SimLog
    partitions: int
    states: list[MemoryState] = field(default_factory=list)
    #: per partition and input topic: the next offset to read, and the committed one
    position: list[dict[str, int]] = field(default_factory=list)
    committed: list[dict[str, int]] = field(default_factory=list)
    #: per partition: fact-topic length at the last checkpoint
    checkpointed_facts: list[int] = field(default_factory=list)
    crashes: int = 0
    #: called with a partition's state after each input it decided on
    check: Callable[[MemoryState], None] | None = None
    #: "facts": state is the fold of its facts; "inputs": an index of its inputs, rebuilt
    #: by reading them again (sending no fact twice), as the anomaly checker's is
    recovery: str = "facts"
    rng: random.Random | None = None
    #: called before each input is read (the scheduler reads its global tables then)
    before_step: Callable[[], None] | None = None
    #: how long dedupe marks are kept (the settings' retention horizon and minimum count)
    horizon_ms: int = 0
    min_marks: int = 0
    #: outputs commit with the offsets, in one transaction at each checkpoint (the
    #: default shell); else they are in the log as decided (flush checkpoints)
    transactional: bool = False
    moves: int = 0

    def __post_init__(self) -> None:
        self.states = [self.fresh_state() for _ in range(self.partitions)]
        self.position = [dict.fromkeys(self.inputs, 0) for _ in range(self.partitions)]
        self.committed = [dict.fromkeys(self.inputs, 0) for _ in range(self.partitions)]
        self.checkpointed_facts = [0] * self.partitions
        self.snapshots = [self.fresh_state() for _ in range(self.partitions)]
        #: per partition: outputs of the open transaction (topic, event, partition, cause)
        self.open: list[list[tuple[str, Event, int | None, str]]] = [
            [] for _ in range(self.partitions)]
        #: per partition: a member the group moved on from that still runs (`move`)
        self.zombies: dict[int, Zombie] = {}

    def _emit(self, p: int, topic: str, event: Event, partition: int | None,
              cause: str = "") -> None:
        if self.transactional:
            self.open[p].append((topic, event, partition, cause))
        else:
            self.log.append(topic, event, partition, cause=cause)

    def commit(self, p: int) -> None:
        """The open transaction's outputs into the log, all at once."""
        for topic, event, partition, cause in self.open[p]:
            self.log.append(topic, event, partition, cause=cause)
        self.open[p] = []

    def fresh_state(self) -> MemoryState:
        return MemoryState(horizon_ms=self.horizon_ms, min_marks=self.min_marks)

    def _fold(self, state: MemoryState, records: list[Record]) -> None:
        """Evolve with facts as the shell folds them: a decision's facts together, then
        its input marked at the newest of their times."""
        i = 0
        while i < len(records):
            j, at = i, 0
            while j < len(records) and records[j].cause == records[i].cause:
                self.reducer.evolve(state, records[j].event)
                at = max(at, records[j].event.occurred_at)
                j += 1
            state.mark_seen(records[i].cause, at)
            i = j

    def pending(self, p: int) -> list[str]:
        """The inputs of partition `p` with records not yet read."""
        return [t for t in self.inputs
                if self.position[p][t] < len(self.log.records[t][p])]

    def step(self, p: int, topic: str) -> None:
        if self.before_step is not None:
            self.before_step()
        record = self.log.records[topic][p][self.position[p][topic]]
        self.position[p][topic] += 1
        state, event = self.states[p], record.event
        accepts = self.reducer.accepts
        if accepts is not None and event.event_type not in accepts:
            return  # a type the role never acts on: the shell skips it undecoded
        if state.has_seen(event.event_id):
            return
        facts = list(self.reducer.decide(state, event))
        for fact in facts:
            self._emit(p, self.fact_topic, fact, p, cause=event.event_id)
            self.reducer.evolve(state, fact)
            self._route(fact, p)
        if facts:
            state.mark_seen(event.event_id, max(f.occurred_at for f in facts))
            if self.check is not None:
                self.check(state)

    def _route(self, fact: Event, p: int | None = None) -> None:
        for routed in self.reducer.route(fact):
            assert isinstance(routed, Routed)
            if p is None:
                self.log.append(routed.topic, routed.event, routed.partition)
            else:
                self._emit(p, routed.topic, routed.event, routed.partition)

    def checkpoint(self, p: int) -> None:
        """State with the offsets it reflects: facts written, then state, then offsets (a
        transaction commits its outputs and the offsets together)."""
        self.commit(p)
        self.committed[p] = dict(self.position[p])
        self.checkpointed_facts[p] = len(self.log.records[self.fact_topic][p])
        self.snapshots[p] = self.states[p].copy()

    def move(self, p: int, zombie_steps: int) -> None:
        """Partition `p` moves to another member, which restores it from the fact topic;
        the member it left does not know yet and goes on deciding for `zombie_steps`
        inputs, into its open transaction (`zombie_step`)."""
        self.moves += 1
        self.zombies[p] = Zombie(self.states[p].copy(), dict(self.position[p]),
                                 self.open[p], zombie_steps)
        self.open[p] = []
        self._restore(p, keep_state=False)
        if TRACE is not None:
            TRACE.append(f"MOVE {self.name}[{p}]")

    def zombie_step(self, p: int) -> None:
        """The deposed member of `p` decides one more input, or tries to commit and is
        refused (fenced): what it wrote since its last commit is never visible. Without
        fencing (`FENCING` off: the planted bug) its transaction commits."""
        zombie = self.zombies[p]
        pending = [t for t in self.inputs
                   if zombie.position[t] < len(self.log.records[t][p])]
        if zombie.steps_left <= 0 or not pending:
            del self.zombies[p]
            if not FENCING:
                for topic, event, partition, cause in zombie.open:
                    self.log.append(topic, event, partition, cause=cause)
            return
        zombie.steps_left -= 1
        topic = pending[0]
        event = self.log.records[topic][p][zombie.position[topic]].event
        zombie.position[topic] += 1
        accepts = self.reducer.accepts
        if (accepts is not None and event.event_type not in accepts) \
                or zombie.state.has_seen(event.event_id):
            return
        facts = list(self.reducer.decide(zombie.state, event))
        for fact in facts:
            zombie.open.append((self.fact_topic, fact, p, event.event_id))
            self.reducer.evolve(zombie.state, fact)
            for routed in self.reducer.route(fact):
                zombie.open.append((routed.topic, routed.event, routed.partition, ""))
        if facts:
            zombie.state.mark_seen(event.event_id, max(f.occurred_at for f in facts))

    def crash(self, p: int, keep_state: bool = False) -> None:
        """Restart partition `p`: from its local state as of its last checkpoint plus the
        facts written since (`keep_state`), or from the fact topic alone; read the inputs
        again from the committed offsets, and send again what the facts written since the
        last checkpoint routed (their consumers dedupe by event id). A transaction open
        at the crash is aborted: none of it is ever in the log."""
        self.crashes += 1
        self.open[p] = []
        self._restore(p, keep_state)

    def _restore(self, p: int, keep_state: bool) -> None:
        self.reducer.restored(p)
        if self.recovery == "inputs":
            self.states[p] = self._reread_inputs(p)
            return
        if keep_state:
            state = self.snapshots[p].copy()
            self._fold(state, self.log.records[self.fact_topic][p][self.checkpointed_facts[p]:])
            self.states[p] = state
        else:
            self.states[p] = self.rebuilt(p)
        self.position[p].update(self.committed[p])  # in place: `World.runnable` holds it
        for record in self.log.records[self.fact_topic][p][self.checkpointed_facts[p]:]:
            self._route(record.event)

    def _reread_inputs(self, p: int) -> MemoryState:
        """Read partition `p`'s inputs again up to where it was, interleaved as a consumer
        may, deciding again and sending only facts not already in the fact topic."""
        assert self.rng is not None
        state = self.fresh_state()
        written = {r.event.event_id for r in self.log.records[self.fact_topic][p]}
        upto = dict(self.position[p])
        at = dict.fromkeys(self.inputs, 0)
        while pending := [t for t in self.inputs if at[t] < upto[t]]:
            topic = pending[self.rng.randrange(len(pending))]
            event = self.log.records[topic][p][at[topic]].event
            at[topic] += 1
            if state.has_seen(event.event_id):
                continue
            facts = list(self.reducer.decide(state, event))
            for fact in facts:
                if fact.event_id not in written:
                    self.log.append(self.fact_topic, fact, p, cause=event.event_id)
                    written.add(fact.event_id)
                self.reducer.evolve(state, fact)
            if facts:
                state.mark_seen(event.event_id, max(f.occurred_at for f in facts))
        return state

    def rebuilt(self, p: int) -> MemoryState:
        """Partition `p`'s state folded from its facts alone (what recovery and replay do)."""
        state = self.fresh_state()
        self._fold(state, self.log.records[self.fact_topic][p])
        return state


@dataclass
class Zombie:
    """A member the group moved on from, still deciding with what it had."""

    state: MemoryState
    position: dict[str, int]
    open: list[tuple[str, Event, int | None, str]]
    steps_left: int


@dataclass
class Attempt:
    scheduled: WorkUnitScheduled
    grant: ClaimGranted | None = None
    finish_at: int = 0
    outcome: str = "completed"


class Outside:
    """The world outside: effects applied by idempotency key. A `token` effect is deduped
    by the outside system itself; any other is applied as often as it is asked."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.applied: dict[str, int] = {}

    def apply(self, key: str, idempotency_class: str) -> None:
        self.asked[key] = self.asked.get(key, 0) + 1
        if idempotency_class == "token" and self.applied.get(key):
            return
        self.applied[key] = self.applied.get(key, 0) + 1

    def readback(self, key: str) -> bool:
        return bool(self.applied.get(key))


class Agent:
    """A node agent's decisions: claim what is scheduled on it, run what is granted, report;
    or die (no report: the scheduler's lease ends it) when the world says so. Its clock is
    the world's plus a skew within the lease safety margin the design assumes."""

    def __init__(self, node: str, incarnation: str, skew_ms: int = 0) -> None:
        self.node = node
        self.incarnation = incarnation
        self.skew_ms = skew_ms
        self.read: dict[tuple[str, int], int] = {}
        self.waiting: dict[str, WorkUnitScheduled] = {}
        self.running: dict[str, Attempt] = {}
        self.seen: set[str] = set()


class World:
    """Everything one seed runs: the log, the roles, the agents, the clock."""

    def __init__(self, seed: int, settings: OnceflowSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.seed = seed
        self.rng = rng or random.Random(seed)
        self.settings = settings or OnceflowSettings(partitions=3)
        self.catalog = TopicCatalog(self.settings)
        c = self.catalog
        self.t = {r: c[r].name for r in ("submissions", "reports", "control", "workunits",
                                         "dispatch", "ledger", "wallets", "llm", "nodes",
                                         "flow", "limits")}
        self.log = SimLog({topic.name: topic.partitions for topic in c.all()})
        n = self.settings.partitions
        estimator = cost_estimator(self.settings.billing)
        self.scheduler = Shell("scheduler", Scheduler(self.settings, catalog=c,
                                                      estimator=estimator),
                               [self.t["submissions"], self.t["reports"], self.t["control"]],
                               self.t["workunits"], self.log, n)
        self.ledger = Shell("ledger", Ledger(self.settings.billing,
                                             load_price_book(self.settings.billing),
                                             c["limits"] if limiter_needed(self.settings)
                                             else None,
                                             horizon_ms=self.settings.retention_horizon_ms),
                            [self.t["workunits"], self.t["llm"]], self.t["ledger"], self.log, n)
        self.wallets = Shell("wallets", WalletFolder(self.settings.billing, c["ledger"]),
                             [self.t["ledger"]], self.t["wallets"], self.log, n)
        self.trust = Shell("trust", TrustScorer(self.settings.trust),
                           [self.t["nodes"], c["outcomes"].name], c["trust"].name, self.log,
                           c["trust"].partitions)
        self.autoscaler = Shell("autoscaler", CapacityController(self.settings.autoscaler),
                                [c["queue"].name], c["capacity"].name, self.log,
                                c["capacity"].partitions)
        #: what the scheduler has read of its global tables (nodes, trust, capacity)
        self._tables_read: dict[tuple[str, int], int] = {}
        self.anomalies = Shell("anomalies", AnomalyChecker(),
                               [self.t["workunits"], self.t["llm"], self.t["ledger"]],
                               c["anomalies"].name, self.log, n, recovery="inputs",
                               rng=self.rng)
        self.shells = [self.scheduler, self.ledger, self.wallets, self.anomalies, self.trust,
                       self.autoscaler]
        for shell in self.shells:  # as the batched shell keeps them: a horizon's marks
            shell.horizon_ms = self.settings.retention_horizon_ms
            shell.min_marks = self.settings.dedupe_min_marks
            shell.states = [shell.fresh_state() for _ in range(shell.partitions)]
            shell.snapshots = [shell.fresh_state() for _ in range(shell.partitions)]
        self.scheduler.before_step = self.observe_tables
        self._inputs: list[tuple[Shell, int, str, list[Record], dict[str, int]]] | None = None
        # the limiter always runs: it keeps every tenant's retry budget
        self.limiter: Shell = Shell("limiter", Limiter.from_settings(self.settings),
                             [self.t["limits"]], self.t["flow"], self.log,
                             c["limits"].partitions, check=self._slots_within_limits,
                             horizon_ms=self.settings.retention_horizon_ms,
                             min_marks=self.settings.dedupe_min_marks)
        self.shells.append(self.limiter)
        self._inputs = None
        #: a limit found exceeded while the limiter ran (it is checked after every step)
        self.over_limit: list[str] = []
        self.now = 1_700_000_000_000
        self.agents: list[Agent] = []
        self.outside = Outside()
        self.lease_safety_ms = 500
        self._heartbeats = 0
        self._progress = UnitProgress()
        #: units the operator resolved, and how
        self.resolved: dict[str, str] = {}
        #: sessions the operator cancelled for being parked at a limit
        self.cancelled_sessions: set[tuple[str, str]] = set()
        self._progress_read: dict[int, int] = {}

    def _slots_within_limits(self, state: MemoryState) -> None:
        assert self.limiter is not None
        limits = self.limiter.reducer.limits  # type: ignore[attr-defined]
        for key, in_use in state.items("s:"):
            scope = key.removeprefix("s:")
            limit = limits.limit_of(scope)
            if limit is not None and in_use > limit:
                self.over_limit.append(f"{scope}: {in_use} slots in use, limit {limit}, "
                                       f"at {self.now}")

    # -- the outside world -------------------------------------------------------------

    def add_agent(self, node: str, skew_ms: int = 0) -> Agent:
        agent = Agent(node, f"{node}-i{len(self.agents)}", skew_ms)
        self.agents.append(agent)
        self.heartbeat(agent)
        return agent

    def heartbeat(self, agent: Agent, health: str = "healthy") -> None:
        self._heartbeats += 1
        hb = NodeHeartbeat(
            event_id=f"hb-{agent.node}-{self._heartbeats}", occurred_at=self.now,
            node_id=agent.node, supported_kinds=["cpu", "llm_pod", "tool"],
            available_concurrency=8, max_concurrency=8, active_queue_depth=len(agent.running),
            utilization=0.0, region="eu-west", version="1.0.0",
            health_status=health, enabled=True, incarnation=agent.incarnation)  # type: ignore[arg-type]
        self.log.append(self.t["nodes"], hb)
        self.observe_tables()

    def observe_tables(self) -> None:
        """The scheduler reads its global tables (nodes, trust, capacity) whole, between
        batches, as the batched shell does."""
        for topic in (self.t["nodes"], self.catalog["trust"].name,
                      self.catalog["capacity"].name):
            for p, records in enumerate(self.log.records[topic]):
                at = self._tables_read.get((topic, p), 0)
                for record in records[at:]:
                    self.scheduler.reducer.observe(record.event)
                self._tables_read[(topic, p)] = len(records)

    def submit(self, event: Event) -> None:
        self.log.append(self.t["submissions"], event)

    def control(self, event: Event) -> None:
        self.log.append(self.t["control"], event)

    def tick(self) -> None:
        for p in range(self.log.partitions[self.t["reports"]]):
            self.log.append(self.t["reports"], ClockTick(
                event_id=f"tick-{p}-{self.now}", occurred_at=self.now, partition=p), p)

    # -- agents ------------------------------------------------------------------------

    def _agent_reads(self, agent: Agent, outcome: Callable[[Attempt], str]) -> bool:
        """Read the agent's new dispatch records; claim, start, stop. True: it read any."""
        topic = self.t["dispatch"]
        moved = False
        for p, records in enumerate(self.log.records[topic]):
            at = agent.read.get((topic, p), 0)
            for record in records[at:]:
                moved = True
                self._agent_sees(agent, record.event, outcome)
            agent.read[(topic, p)] = len(records)
        return moved

    def _agent_sees(self, agent: Agent, event: Event,
                    outcome: Callable[[Attempt], str]) -> None:
        if isinstance(event, WorkUnitScheduled):
            if event.selected_node_id != agent.node or event.event_id in agent.seen:
                return
            agent.seen.add(event.event_id)
            agent.waiting[f"{event.work_unit_id}:{event.attempt_index}"] = event
            self.log.append(self.t["reports"], ClaimRequested(
                **caused_by(event, f"claim:{agent.incarnation}", occurred_at=self.now),
                node_id=agent.node, attempt_index=event.attempt_index,
                scheduling_epoch=event.scheduling_epoch, incarnation=agent.incarnation))
        elif isinstance(event, ClaimGranted | ClaimRejected):
            if event.node_id != agent.node or event.incarnation != agent.incarnation:
                return
            scheduled = agent.waiting.pop(f"{event.work_unit_id}:{event.attempt_index}", None)
            if scheduled is not None and isinstance(event, ClaimGranted):
                attempt = Attempt(scheduled, event,
                                  finish_at=self.now + self.rng.randint(1, 2_000))
                attempt.outcome = outcome(attempt)
                agent.running[f"{event.work_unit_id}:{event.attempt_index}"] = attempt
        elif isinstance(event, WorkUnitCancelled) and event.node_id == agent.node:
            for attempt in agent.running.values():
                if attempt.scheduled.work_unit_id == event.work_unit_id:
                    attempt.outcome = "cancelled"
                    attempt.finish_at = self.now

    def _agent_finishes(self, agent: Agent) -> bool:
        done = [k for k, a in agent.running.items() if a.finish_at <= self.now]
        for key in sorted(done):
            self._finish(agent, agent.running.pop(key))
        return bool(done)

    def _finish(self, agent: Agent, a: Attempt) -> None:
        """What the agent's handler did, as the real agent orders it: an LLM call's tokens
        are reported before the result; a world-mutating effect is staged (in the log)
        before it is applied, and not started this close to the lease's end."""
        grant, sched = a.grant, a.scheduled
        assert grant is not None
        if a.outcome == "vanish":
            return  # died before anything: no report, the lease ends it
        if a.outcome == "cancelled":
            self._failed(agent, a, "cancelled")
            return
        if stages_effect(sched.effect):
            # every kind stages a world-mutating effect before it acts (an LLM call too)
            key = grant.idempotency_key or sched.work_unit_id or ""
            already = sched.kind == "tool" and sched.idempotency_class == "readback" \
                and self.outside.readback(key)
            if not already:
                if self.now + agent.skew_ms >= grant.lease_expires_at - self.lease_safety_ms:
                    self._failed(agent, a, "node_timeout")
                    return
                self.log.append(self.t["reports"], EffectStaged(
                    **caused_by(grant, "staged", occurred_at=self.now), node_id=agent.node,
                    attempt_index=sched.attempt_index, idempotency_key=key,
                    description="simulated effect"))
                if a.outcome == "die_after_stage":
                    return
                if a.outcome != "provider_429":  # a refused call changed nothing
                    self.outside.apply(key, sched.idempotency_class)
                if a.outcome == "die_after_apply":
                    return
        tokens = 0
        if sched.kind == "llm_pod" and a.outcome != "provider_429":
            # as a provider does: the prompt's tokens in, and out no more than the unit's
            # max_tokens (without one, the stub's estimate)
            prompt = sched.prompt or ""
            cap = max_tokens_of(sched.parameters)
            tokens_in = estimated_input_tokens(prompt)
            tokens_out = self.rng.randint(0, cap) if cap else \
                estimated_output_tokens(prompt, None)
            tokens = tokens_in + tokens_out
            self.log.append(self.t["llm"], LlmInvocationCompleted(
                **caused_by(grant, "llm", occurred_at=self.now), node_id=agent.node,
                attempt_index=sched.attempt_index, provider="stub", model=sched.model or "stub",
                tokens_in=tokens_in, tokens_out=tokens_out, total_tokens=tokens, latency_ms=1,
                estimated_cost_usd=Decimal(0)))
            if a.outcome == "vanish_after_call":
                return
        if sched.kind == "llm_pod" and a.outcome == "provider_429":
            # the provider said "later": the call is recorded as refused, the attempt ends
            # asking for a retry then (the scheduler pauses the scope for every node)
            self.log.append(self.t["llm"], LlmInvocationFailed(
                **caused_by(grant, "llm", occurred_at=self.now), node_id=agent.node,
                attempt_index=sched.attempt_index, provider="stub",
                model=sched.model or "stub", error_code="provider_backoff"))
            self.log.append(self.t["reports"], WorkUnitFailureReported(
                **caused_by(grant, "failed", occurred_at=self.now),
                node_id=agent.node, attempt_index=sched.attempt_index,
                error_code="provider_backoff", error_reason="429", incarnation=agent.incarnation,
                retry_at=self.now + self.rng.randint(1_000, 30_000), provider="stub",
                model=sched.model or "stub", cpu_seconds=Decimal("0.010000")))
            return
        if a.outcome in ("completed", "die_after_stage", "die_after_apply",
                         "vanish_after_call"):
            self.log.append(self.t["reports"], WorkUnitResultReported(
                **caused_by(grant, "completed", occurred_at=self.now),
                node_id=agent.node, attempt_index=sched.attempt_index,
                cpu_seconds=Decimal(self.rng.choice(["0.010000", "0.250000", "1.000000"])),
                llm_tokens=tokens, started_at=grant.occurred_at, finished_at=self.now,
                kind=sched.kind, incarnation=agent.incarnation))
        else:
            self._failed(agent, a, a.outcome)

    def _failed(self, agent: Agent, a: Attempt, code: str) -> None:
        assert a.grant is not None
        self.log.append(self.t["reports"], WorkUnitFailureReported(
            **caused_by(a.grant, "failed", occurred_at=self.now),
            node_id=agent.node, attempt_index=a.scheduled.attempt_index,
            error_code=code, error_reason="simulated", incarnation=agent.incarnation,
            cpu_seconds=Decimal("0.010000")))

    # -- running -----------------------------------------------------------------------

    def runnable(self) -> list[tuple[Shell, int, str]]:
        """Every (role, partition, input topic) with a record not yet read."""
        if self._inputs is None:
            self._inputs = [(s, p, t, self.log.records[t][p], s.position[p])
                            for s in self.shells for p in range(s.partitions)
                            for t in s.inputs]
        return [(s, p, t) for s, p, t, records, read in self._inputs
                if read[t] < len(records)]

    def drain(self) -> None:
        """Read every role's inputs to their ends (in a fixed order: no faults here); a
        transactional role commits what it read of each input as one batch, members the
        group left behind give up (they are fenced)."""
        self.end_zombies()
        for shell in self.shells:
            for p in range(shell.partitions):
                if shell.open[p]:
                    shell.checkpoint(p)
        while work := self.runnable():
            for shell, p, topic in work:
                records = self.log.records[topic][p]
                while shell.position[p][topic] < len(records):
                    shell.step(p, topic)
                if shell.transactional:
                    shell.checkpoint(p)  # what it read, one batch: one transaction

    def end_zombies(self) -> None:
        for shell in self.shells:
            for p in sorted(shell.zombies):
                while p in shell.zombies:
                    shell.zombie_step(p)

    def transactions(self, on: bool) -> None:
        """Every role writes through transactions (`on`) or flush checkpoints."""
        for shell in self.shells:
            shell.transactional = on

    def run(self, *, steps: int, faults: Faults, outcome: Callable[[Attempt], str],
            advance_ms: Sequence[int] = (0, 0, 0, 5, 50, 500)) -> None:
        """Interleave the roles' reads, the agents, checkpoints, crashes and the clock."""
        for _ in range(steps):
            choice = self.rng.random()
            work = self.runnable()
            if work and choice < 0.8:
                shell, p, topic = work[self.rng.randrange(len(work))]
                shell.step(p, topic)
                if self.rng.random() < faults.checkpoint:
                    shell.checkpoint(p)
                if self.rng.random() < faults.crash:
                    shell.crash(p, keep_state=faults.keep_state)
                    if TRACE is not None:
                        TRACE.append(f"CRASH {shell.name}[{p}] at {self.now}"
                                     f"{' (state kept)' if faults.keep_state else ''}")
                if faults.moves is not None and shell.transactional:
                    # a partition moves to another member at a random point; the one it
                    # left goes on deciding (and writing) for a while before it is fenced
                    if faults.moves.random() < faults.move:
                        shell.move(p, faults.moves.randint(1, 8))
                    for zp in sorted(shell.zombies):
                        if faults.moves.random() < 0.5:
                            shell.zombie_step(zp)
                continue
            for agent in self.agents:
                self._agent_reads(agent, outcome)
                self._agent_finishes(agent)
            self.now += self.rng.choice(advance_ms)
            if self.rng.random() < faults.clock_jump:
                # the clock jumps (a paused VM, an NTP step): leases end, retries come due,
                # agents finish work the scheduler has given up on
                self.now += self.rng.randint(60_000, 600_000)
                if TRACE is not None:
                    TRACE.append(f"CLOCK JUMP to {self.now}")
            if self.rng.random() < 0.3:
                self.tick()
            if self.rng.random() < 0.05:
                for agent in self.agents:
                    self.heartbeat(agent)

    def settle(self, *, outcome: Callable[[Attempt], str],
               horizon_ms: int = 3 * 3_600_000) -> None:
        """Run without faults until every unit has ended: drain the roles, let agents
        finish, and move the clock on (leases end, retries and deadlines come due), for
        at most `horizon_ms` of logged time. What has not ended by then is for the
        liveness invariant to name."""
        end = self.now + horizon_ms
        idle = 0
        while self.now < end:
            self.drain()
            moved = False
            for agent in self.agents:
                moved |= self._agent_reads(agent, outcome)
                moved |= self._agent_finishes(agent)
            if moved or self.runnable():
                idle = 0
                continue
            if self.resolve_parked() or self.cancel_sessions_at_a_limit():
                continue
            if all(not a.running for a in self.agents) and self.quiet():
                return
            idle += 1
            # a second at a time while things happen; minutes once nothing has for a while
            self.now += 1_000 if idle < 10 else 60_000
            self.tick()
            if idle % 10 == 0:
                for agent in self.agents:
                    self.heartbeat(agent)

    def cancel_sessions_at_a_limit(self) -> bool:
        """The operator cancels each session parked at one of its limits (its inbox entry:
        raise the limit or cancel); True: it cancelled any."""
        acted = False
        for part in self.log.records[self.t["flow"]]:
            for record in part:
                e = record.event
                if not (isinstance(e, SessionLimitCrossed) and e.threshold == "reached"):
                    continue
                key = (e.tenant_id, e.execution_session_id)
                if key in self.cancelled_sessions:
                    continue
                self.cancelled_sessions.add(key)
                self.control(ControlRequested(
                    event_id=f"limit-cancel-{e.tenant_id}-{e.execution_session_id}",
                    occurred_at=self.now, action="cancel", scope="session",
                    tenant_id=e.tenant_id, execution_session_id=e.execution_session_id,
                    requested_by="sim", reason="over its limit", broadcast=True))
                acted = True
        return acted

    def resolve_parked(self) -> bool:
        """The operator resolves each unit parked in needs_operator, as a careful one does:
        reads the outside world, marks done what was applied, retries (or abandons) what
        was not. True: it resolved any."""
        acted = False
        for wu, state in sorted(self.progress().status.items()):
            if state != "needs_operator" or wu in self.resolved:
                continue
            key = idempotency_key_for(wu)
            resolution = "mark_done" if self.outside.readback(key) else \
                self.rng.choice(["retry", "retry", "abandon"])
            self.resolved[wu] = resolution
            self.control(ControlOperatorResolved(
                event_id=f"resolve-{wu}", occurred_at=self.now, work_unit_id=wu,
                resolution=resolution, operator="sim"))  # type: ignore[arg-type]
            acted = True
        return acted

    def progress(self) -> UnitProgress:
        """Units' states from the scheduler's facts, folded on from where it last was."""
        for p, records in enumerate(self.log.records[self.t["workunits"]]):
            at = self._progress_read.get(p, 0)
            for record in records[at:]:
                self._progress.add(record.event, record.event.occurred_at)
            self._progress_read[p] = len(records)
        return self._progress

    def forget(self, ms: int) -> None:
        """Let `ms` of logged time pass with nothing to do but ticks and heartbeats (what
        the retention horizon is measured in)."""
        end, step = self.now + ms, max(1_000, ms // 8)
        while self.now < end:
            self.now = min(end, self.now + step)
            self.tick()
            for agent in self.agents:
                self.heartbeat(agent)
            self.drain()

    def holds_left(self) -> bool:
        """Whether the ledger still holds an LLM call for a settlement."""
        return any(next(iter(state.items("h:")), None) is not None
                   for state in self.ledger.states)

    def quiet(self) -> bool:
        """Whether every unit has ended, none waiting for an operator who has not acted
        (the settle loop's stop condition)."""
        states = self.progress().status
        return bool(states) and all(
            s in SETTLED_STATES and (s != "needs_operator" or wu in self.resolved)
            for wu, s in states.items())




@dataclass(frozen=True)
class Faults:
    """How often, per step, a role checkpoints or crashes; a crash keeps the local state
    as of its last checkpoint (`keep_state`) or loses it all; how often, per move of the
    clock, it jumps minutes ahead."""

    checkpoint: float = 0.2
    crash: float = 0.0
    keep_state: bool = False
    clock_jump: float = 0.0
    #: per step of a transactional role: how often its partition moves to another member
    move: float = 0.0
    #: the random source of moves and of what deposed members do (its own, so that a
    #: seed's other draws stay what they were)
    moves: random.Random | None = None
