"""The node agent: dispatch intake, the claim handshake, execution, heartbeats.

An agent reads its node's dispatch partition. For every unit scheduled on
it, it asks for the claim; it executes only what the scheduler granted to
this very run of the agent (its incarnation), so a restarted or duplicated
agent never executes a grant that was given to another run. World-changing
units of every kind (cpu, llm, tool) record `effect.staged` and wait for the
broker's ack before acting,
and never start acting once the lease is about to end: that is what lets
the scheduler tell "never acted" from "may have acted" after a crash.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from confluent_kafka import TopicPartition

from onceflow.agents._impl.handlers import (
    HandlerError,
    TaskContext,
    import_handler_modules,
    lookup_handler,
    lookup_tool,
)
from onceflow.agents._impl.providers import LlmProvider, ProviderError, provider_from_settings
from onceflow.schemas import (
    ClaimGranted,
    ClaimRejected,
    ClaimRequested,
    CodecError,
    EffectStaged,
    Event,
    LlmInvocationCompleted,
    LlmInvocationFailed,
    NodeHeartbeat,
    SingleObjectCodec,
    WorkUnitCancelled,
    WorkUnitFailureReported,
    WorkUnitResultReported,
    WorkUnitScheduled,
    max_tokens_of,
    quantize_money,
    stages_effect,
)
from onceflow.streams.content import open_content_store
from onceflow.streams.ids import caused_by, derive_event_id
from onceflow.streams.kafka import (
    DeadLetterRouter,
    EventProducer,
    RecordGate,
    assign_from_committed,
    make_consumer,
)
from onceflow.streams.log import get_logger
from onceflow.streams.metrics import active_sensor
from onceflow.streams.runtime.batched import next_batch
from onceflow.streams.topics.catalog import TopicCatalog
from onceflow.streams.types import ContentStore

if TYPE_CHECKING:
    from onceflow.agents.settings import AgentRoleSettings

__all__ = ["AGENT_VERSION", "NodeAgent", "queue_target"]

AGENT_VERSION = "1.0.0"


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Backoff(Exception):
    """A provider asked this node to call again at `until` (wall ms, which agents log)."""

    def __init__(self, message: str, until: int, provider: str, model: str) -> None:
        super().__init__(message)
        self.until = until
        self.provider = provider
        self.model = model


class NodeAgent:
    def __init__(
        self,
        settings: AgentRoleSettings,
        *,
        node_id: str,
        region: str | None = None,
        kinds: Sequence[str] = ("cpu",),
        concurrency: int = 4,
        version: str = AGENT_VERSION,
        provider: LlmProvider | None = None,
        store: ContentStore | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.cfg = settings.agent
        self.node_id = node_id
        self.region = region
        self.kinds = sorted(set(kinds))
        self.concurrency = concurrency
        self.version = version
        self.incarnation = uuid.uuid4().hex[:12]
        self.on_ready = on_ready
        import_handler_modules(self.cfg.handler_modules)
        self.provider = provider or (
            provider_from_settings(self.cfg) if "llm_pod" in self.kinds else None)
        self.store = store or open_content_store(settings)
        self.catalog = TopicCatalog(settings)
        self._dispatch = self.catalog["dispatch"]
        self._reports = self.catalog["reports"]
        self._llm = self.catalog["llm"]
        self._nodes = self.catalog["nodes"]
        self.codec = SingleObjectCodec()
        linger: dict[str, Any] = {"linger.ms": 1}
        self.producer = EventProducer(settings, self.codec, on_delivered=None, **linger)
        self._gate = RecordGate.for_topics(settings, [self.catalog["dispatch"].name])
        self._dlq = DeadLetterRouter(self.producer, self.catalog["deadletters"].name,
                                     f"agent:{node_id}")
        self.log = get_logger(role="agent", node=node_id, incarnation=self.incarnation)
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._done = threading.Event()  # this run is over (stopped or drained)
        self._drain_deadline = 0.0
        self._lock = threading.Lock()
        #: per LLM scope (the units' model): until when its provider asked this node to wait
        self._paused_until: dict[str, int] = {}
        self._waiting: dict[str, WorkUnitScheduled] = {}
        #: the running units' contexts, by work unit: a cancel sets their flag
        self._running_ctx: dict[str, TaskContext] = {}
        #: units cancelled before their handler started (their grant may be queued here)
        self._cancelled: set[str] = set()
        #: this process's metrics, when it serves them (ONCEFLOW_METRICS_PORT)
        self._sensor = active_sensor()
        self._inflight = 0
        self._running = 0
        self._heartbeat_seq = 0
        self.executed = 0
        self._unit_seconds: float | None = None  # moving average of a unit's run time
        #: when the last units that ran while others waited in the queue finished
        self._busy_done: deque[float] = deque(maxlen=32)
        self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                        thread_name_prefix=f"agent-{node_id}")

    # -- lifecycle -------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def request_drain(self, *_: Any) -> None:
        """Take no new work, finish what was claimed, then stop (the fleet's scale-down).

        The heartbeat says `draining` at once, so the scheduler places nothing
        more here; dispatches that still arrive are not claimed, and are placed
        elsewhere when their claim deadline passes.
        """
        if not self._draining.is_set():
            self._draining.set()
            self._drain_deadline = time.monotonic() + self.cfg.drain_timeout_s
            self.log.info("agent.draining")
            try:
                self._send_heartbeat(health="draining")
            except Exception as exc:  # the next beat says it again
                self.log.warning("heartbeat.failed", error=str(exc)[:200])

    def _drained(self) -> bool:
        if not self._draining.is_set():
            return False
        with self._lock:
            idle = not self._waiting and self._inflight == 0
        return idle or time.monotonic() > self._drain_deadline

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        consumer = make_consumer(self.settings, f"{self.settings.topic_prefix}agent.{self.node_id}")
        assign_from_committed(consumer, [TopicPartition(
            self._dispatch.name, self._dispatch.partition_of(self.node_id))])
        self._send_heartbeat()
        self.producer.flush()
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beat.start()
        self.log.info("agent.started", kinds=self.kinds, concurrency=self.concurrency,
                      region=self.region)
        if self.on_ready is not None:
            self.on_ready()
        last_commit = 0.0
        try:
            while not self._stop.is_set():
                msgs = next_batch(consumer, 500, 0.05)
                for msg in msgs:
                    self._intake(msg)
                self.producer.poll(0)
                # Where to resume reading after a restart is only a convenience
                # (a restarted agent's claims are arbitrated again), so the
                # position is committed once a second, not per batch.
                if msgs and time.monotonic() - last_commit > 1.0:
                    consumer.commit(asynchronous=True)
                    last_commit = time.monotonic()
                if self._drained():
                    self.log.info("agent.drained", executed=self.executed)
                    break
        finally:
            self._done.set()
            self.log.info("agent.stopping", executed=self.executed)
            self._pool.shutdown(wait=True, cancel_futures=False)
            try:
                self._send_heartbeat(health="down")  # tell the scheduler before going
                self.producer.flush(10)
            except Exception as exc:  # the broker may be gone already
                self.log.warning("agent.final_flush_failed", error=str(exc)[:200])
            finally:
                consumer.close()

    def _heartbeats(self) -> None:
        interval = self.cfg.heartbeat_interval_ms / 1000
        while not self._stop.wait(interval) and not self._done.is_set():
            try:
                self._send_heartbeat("draining" if self._draining.is_set() else "healthy")
            except Exception as exc:  # the next beat follows; a missed one only ages trust
                self.log.warning("heartbeat.failed", error=str(exc)[:200])

    def queue_target(self) -> int:
        """How much queued work to ask for: what this node can finish in the queue horizon.

        The capacity comes from how long units have taken here (a moving
        average), not from how many it was given, so a node that was sent
        little can still ask for more; and, once units have waited in its
        queue, from how fast it finished them then, which counts what the
        run time leaves out (claims, reports, a machine shared with others).
        Before the first unit it asks for a modest queue.
        """
        with self._lock:
            seconds = self._unit_seconds
            busy = list(self._busy_done)
        return queue_target(self.concurrency, seconds, busy, time.monotonic(),
                            self.cfg.queue_horizon_s, self.cfg.queue_limit)

    def _send_heartbeat(self, health: str = "healthy") -> None:
        target = self.queue_target()
        with self._lock:
            queued = len(self._waiting) + self._inflight
            running = self._running
            self._heartbeat_seq += 1
            seq = self._heartbeat_seq
        free = 0 if health != "healthy" else max(0, self.concurrency + target - queued)
        self.producer.send(self._nodes, NodeHeartbeat(
            event_id=derive_event_id(f"{self.node_id}:{self.incarnation}", f"hb:{seq}"),
            occurred_at=_now_ms(), node_id=self.node_id, enabled=health == "healthy",
            health_status=health,  # type: ignore[arg-type]
            supported_kinds=self.kinds, max_concurrency=self.concurrency,
            available_concurrency=free, active_queue_depth=queued,
            utilization=round(min(1.0, running / self.concurrency), 4), region=self.region,
            version=self.version, sequence=seq, incarnation=self.incarnation,
        ))

    # -- intake ----------------------------------------------------------------------

    def _intake(self, msg: Any) -> None:
        raw = msg.value()
        if msg.error() is not None or raw is None:
            return
        event: Event | None = None
        refused: Exception | None = self._gate.before(raw)
        try:
            event = self.codec.decode(raw) if refused is None else None
        except CodecError as exc:
            refused = exc
        if event is not None:
            refused = self._gate.after(event.event_type, msg.topic())
        if refused is not None or event is None:
            self._dlq.route(msg, refused or CodecError("no event"))
            return
        if isinstance(event, WorkUnitScheduled):
            if event.selected_node_id != self.node_id or self._draining.is_set():
                return
            key = f"{event.work_unit_id}:{event.attempt_index}"
            with self._lock:
                self._waiting[key] = event
            self.producer.send(self._reports, ClaimRequested(
                **caused_by(event, f"claim:{self.incarnation}", occurred_at=_now_ms()),
                node_id=self.node_id, attempt_index=event.attempt_index,
                scheduling_epoch=event.scheduling_epoch, incarnation=self.incarnation,
            ))
        elif isinstance(event, WorkUnitCancelled):
            if event.node_id != self.node_id:
                return
            wu = event.work_unit_id or ""
            with self._lock:
                running = self._running_ctx.get(wu)
                if running is None:
                    self._cancelled.add(wu)
            if running is not None:
                running.cancelled.set()
            self.log.info("unit.cancel_received", work_unit=wu, running=running is not None,
                          requested_by=event.requested_by)
        elif isinstance(event, ClaimGranted | ClaimRejected):
            if event.node_id != self.node_id or event.incarnation != self.incarnation:
                return  # another run of this node asked; never ours to execute
            key = f"{event.work_unit_id}:{event.attempt_index}"
            with self._lock:
                scheduled = self._waiting.pop(key, None)
                if scheduled is not None and isinstance(event, ClaimGranted):
                    self._inflight += 1
            if scheduled is not None and isinstance(event, ClaimGranted):
                self._pool.submit(self._execute, scheduled, event)

    # -- execution ---------------------------------------------------------------------

    def _execute(self, sched: WorkUnitScheduled, grant: ClaimGranted) -> None:
        with self._lock:
            self._running += 1
        log = self.log.bind(work_unit=sched.work_unit_id, attempt=sched.attempt_index,
                            tenant=sched.tenant_id, session=sched.execution_session_id)
        started = _now_ms()
        t0 = time.perf_counter()
        outcome = "crashed"
        ran = False  # a unit refused before it started says nothing of how long units take
        try:
            if started >= grant.lease_expires_at - self.cfg.lease_safety_ms:
                raise HandlerError("the lease ended before the unit could start", "node_timeout")
            ran = True
            ctx = self._context(sched, grant)
            wu = sched.work_unit_id or ""
            with self._lock:
                self._running_ctx[wu] = ctx
                if wu in self._cancelled:
                    self._cancelled.discard(wu)
                    ctx.cancelled.set()
            ctx.raise_if_cancelled()
            result, media_type, tokens = self._run_kind(sched, grant, ctx)
            ref = self.store.put(result, media_type)
            seconds = quantize_money(Decimal(str(time.perf_counter() - t0)))
            self.producer.send(self._reports, WorkUnitResultReported(
                **caused_by(grant, "completed", occurred_at=_now_ms()), node_id=self.node_id,
                attempt_index=sched.attempt_index, correlation_id=sched.tenant_correlation_id,
                result_ref=ref, cpu_seconds=seconds, llm_tokens=tokens, started_at=started,
                finished_at=_now_ms(), kind=sched.kind, incarnation=self.incarnation,
            ))
            self.executed += 1
            outcome = "completed"
        except _Backoff as exc:
            outcome = "provider_backoff"
            log.info("unit.provider_backoff", until=exc.until, model=exc.model)
            self._report_failure(sched, grant, "provider_backoff", str(exc), t0,
                                 retry_at=exc.until, provider=exc.provider, model=exc.model)
        except (HandlerError, ProviderError) as exc:
            outcome = exc.code
            log.warning("unit.failed", error_code=exc.code, error=str(exc)[:200])
            self._report_failure(sched, grant, exc.code, str(exc), t0)
        except Exception as exc:
            log.exception("unit.crashed")
            self._report_failure(sched, grant, "handler_error", f"{type(exc).__name__}: {exc}",
                                 t0)
        finally:
            took = time.perf_counter() - t0
            if self._sensor is not None:
                self._sensor.on_attempt(self.node_id, sched.kind, outcome, took)
            with self._lock:
                self._running_ctx.pop(sched.work_unit_id or "", None)
                self._running -= 1
                self._inflight -= 1
                if ran:
                    # Only units that ran: counting the instant refusals of units whose
                    # leases ended in the queue would make units look fast, ask for a
                    # longer queue, and let more leases end in it.
                    avg = self._unit_seconds
                    self._unit_seconds = took if avg is None else 0.9 * avg + 0.1 * took
                    if self._inflight > self._running:  # others waited: it ran flat out
                        self._busy_done.append(time.monotonic())

    def _report_failure(self, sched: WorkUnitScheduled, grant: ClaimGranted, code: str,
                        reason: str, t0: float, *, retry_at: int = 0, provider: str = "",
                        model: str = "") -> None:
        self.producer.send(self._reports, WorkUnitFailureReported(
            **caused_by(grant, "failed", occurred_at=_now_ms()), node_id=self.node_id,
            attempt_index=sched.attempt_index, correlation_id=sched.tenant_correlation_id,
            error_code=code, error_reason=reason[:500], incarnation=self.incarnation,
            retry_at=retry_at, provider=provider, model=model,
            cpu_seconds=quantize_money(Decimal(str(time.perf_counter() - t0))),
        ))

    def _context(self, sched: WorkUnitScheduled, grant: ClaimGranted) -> TaskContext:
        return TaskContext(
            work_unit_id=sched.work_unit_id or "", attempt=sched.attempt_index,
            tenant_id=sched.tenant_id, session_id=sched.execution_session_id,
            parameters=dict(sched.parameters), simulated_ms=sched.simulated_ms,
            prompt=sched.prompt, model=sched.model, node_id=self.node_id,
            idempotency_key=grant.idempotency_key or sched.idempotency_key,
            input_bytes=self.store.get(sched.input_ref) if sched.input_ref else None,
            parent_results=[self.store.get(r) for r in sched.parent_result_refs],
            parent_refs=list(sched.parent_result_refs),
        )

    def _run_kind(self, sched: WorkUnitScheduled, grant: ClaimGranted,
                  ctx: TaskContext) -> tuple[bytes, str, int]:
        if stages_effect(sched.effect):
            # One rule for every kind: the intent is in the log before the world changes,
            # so an attempt that ends unreported after this is parked, not rerun blindly.
            already = self._stage_effect(sched, grant, ctx)
            if already is not None:
                return already, "application/json", 0
        if sched.kind == "llm_pod":
            return self._run_llm(sched, grant, ctx)
        if sched.kind == "tool":
            return lookup_tool(sched.handler).apply(ctx), "application/json", 0
        return lookup_handler(sched.handler)(ctx), "application/json", 0

    def _run_llm(self, sched: WorkUnitScheduled, grant: ClaimGranted,
                 ctx: TaskContext) -> tuple[bytes, str, int]:
        if self.provider is None:
            raise HandlerError("this agent has no LLM provider", "unsupported_kind")
        prompt = ctx.prompt or ""
        scope = ctx.model or ""
        with self._lock:
            paused = self._paused_until.get(scope, 0)
        if paused > _now_ms():
            # This node was told to wait: no call until then (the scheduler pauses the
            # scope for every node once it settles the first refusal).
            raise _Backoff(f"the provider asked to wait until {paused}", paused,
                           self.provider.name, scope)
        ctx.raise_if_cancelled()
        try:
            result = self.provider.complete(prompt, ctx.model, max_tokens_of(ctx.parameters))
        except ProviderError as exc:
            self.producer.send(self._llm, LlmInvocationFailed(
                **caused_by(grant, "llm", occurred_at=_now_ms()), node_id=self.node_id,
                attempt_index=sched.attempt_index, correlation_id=sched.tenant_correlation_id,
                provider=self.provider.name, model=ctx.model or "", error_code=exc.code,
                error_reason=str(exc)[:500],
            ))
            if exc.code == "provider_backoff":
                until = _now_ms() + (exc.retry_after_ms if exc.retry_after_ms is not None
                                     else self.cfg.llm_backoff_ms)
                with self._lock:
                    self._paused_until[scope] = max(until, self._paused_until.get(scope, 0))
                raise _Backoff(str(exc), until, self.provider.name, scope) from exc
            raise
        ref = self.store.put(result.text.encode(), "text/plain; charset=utf-8")
        self.producer.send(self._llm, LlmInvocationCompleted(
            **caused_by(grant, "llm", occurred_at=_now_ms()), node_id=self.node_id,
            attempt_index=sched.attempt_index, correlation_id=sched.tenant_correlation_id,
            provider=result.provider, model=result.model, tokens_in=result.tokens_in,
            tokens_out=result.tokens_out, total_tokens=result.total_tokens,
            latency_ms=result.latency_ms, estimated_cost_usd=self.provider.estimated_cost(result),
            response_ref=ref,
        ))
        # cancelled while the call was out: its tokens were spent (and reported above),
        # its answer is abandoned
        ctx.raise_if_cancelled()
        return result.text.encode(), "text/plain; charset=utf-8", result.total_tokens

    def _stage_effect(self, sched: WorkUnitScheduled, grant: ClaimGranted,
                      ctx: TaskContext) -> bytes | None:
        """Record a world-mutating attempt's intent and wait for the broker's ack before it
        acts; returns the result instead when a `readback` tool finds the effect done."""
        ctx.raise_if_cancelled()  # not staged yet: stop; once staged, the effect finishes
        if sched.kind == "tool" and sched.idempotency_class == "readback":
            tool = lookup_tool(sched.handler)
            if tool.readback is not None:
                already = tool.readback(ctx)
                if already is not None:
                    return already  # it happened in an earlier attempt: commit from readback
        what = {"tool": f"tool {sched.handler or 'effects.append'}",
                "llm_pod": f"llm call {sched.model or ''}".rstrip()}.get(
                    sched.kind, f"{sched.kind} handler {sched.handler or 'simulate'}")
        self.producer.send(self._reports, EffectStaged(
            **caused_by(grant, "staged", occurred_at=_now_ms()), node_id=self.node_id,
            attempt_index=sched.attempt_index, idempotency_key=ctx.idempotency_key,
            description=what,
        ))
        self.producer.flush()  # the intent is in the log before the world changes
        if _now_ms() >= grant.lease_expires_at - self.cfg.lease_safety_ms:
            raise HandlerError("the lease ended before the effect could start", "node_timeout")
        return None

    # -- inspection --------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"waiting": len(self._waiting), "inflight": self._inflight,
                    "running": self._running, "executed": self.executed}


def queue_target(concurrency: int, unit_seconds: float | None, busy_done: Sequence[float],
                 now: float, horizon_s: float, limit: int) -> int:
    """The queue a node asks for (see `NodeAgent.queue_target`): its capacity times the
    horizon, at least twice its concurrency, at most `limit`. `busy_done`: when recent
    units that ran while others waited finished (monotonic seconds); eight or more
    within the last five seconds give the rate it actually reached, which caps what
    the run time alone suggests."""
    if unit_seconds is None:
        return min(limit, 16 * concurrency)
    capacity = concurrency / max(unit_seconds, 1e-4)
    if len(busy_done) >= 8 and now - busy_done[-1] < 5.0 and busy_done[-1] > busy_done[0]:
        capacity = min(capacity, (len(busy_done) - 1) / (busy_done[-1] - busy_done[0]))
    wanted = int(capacity * horizon_s)
    return min(limit, max(2 * concurrency, wanted))
