"""Prometheus metrics for a role's processors, through the one metrics hook (`Sensor`).

A role's process serves `/metrics` when `ONCEFLOW_METRICS_PORT` is set (0: any
free port, which the role writes beside its ready file). Its batched
processors then report every batch and every fact they write for the first
time to the process's sensor: the shell's own figures (records in, facts out,
batch time, dead letters, and every few seconds the lag per input partition and
the size of the local state) and the domain's, read from the facts (units
settled by state, submit-to-settled time, line items and spend, tokens,
limit denials, breaker states). Facts found again while a processor rebuilds
are not written again, so they are not counted twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from onceflow.schemas import (
    RESEND_REJECTIONS,
    AdmissionMode,
    CapacityWindowClosed,
    Event,
    LedgerChargeHeld,
    LedgerLineItem,
    QueueSampled,
    SlotDenied,
    TrustScoreUpdated,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitRejected,
)

__all__ = ["PrometheusSensor", "active_sensor", "serve_metrics"]

_BREAKER = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
_MODES: tuple[str, ...] = get_args(AdmissionMode)


class PrometheusSensor:
    """The shell's and the domain's figures, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("onceflow_events_in", "records a processor read",
                                 ["processor"], registry=r)
        self.facts_out = Counter("onceflow_facts_out", "facts a processor wrote",
                                 ["processor"], registry=r)
        self.batch_seconds = Histogram(
            "onceflow_batch_seconds", "time to decide and write one batch", ["processor"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r)
        self.dead_letters = Counter("onceflow_dead_letters", "records sent to the dead-letter "
                                    "topic", ["processor", "topic"], registry=r)
        self.units_settled = Counter("onceflow_units_settled", "units that reached an end",
                                     ["state"], registry=r)
        self.settle_seconds = Histogram(
            "onceflow_submit_to_settled_seconds", "from submission to accepted result",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.line_items = Counter("onceflow_line_items", "ledger line items",
                                  ["type", "billed"], registry=r)
        self.spend = Counter("onceflow_spend_usd", "billed USD",
                             ["tenant", "model", "provider"], registry=r)
        self.tokens = Counter("onceflow_llm_tokens", "LLM tokens billed",
                              ["tenant", "model", "provider", "direction"], registry=r)
        self.in_flight = Gauge("onceflow_units_in_flight", "units a scheduler partition holds "
                               "and has not settled, by where they are (its last queue "
                               "sample)", ["partition", "state"], registry=r)
        self.denials = Counter("onceflow_limit_denials", "requests the limiter refused",
                               ["reason"], registry=r)
        self.breakers = Gauge("onceflow_breaker_state", "a node's breaker: 0 closed, "
                              "1 half open, 2 open", ["node"], registry=r)
        self.attempts = Counter("onceflow_agent_attempts", "attempts a node agent ran, by how "
                                "they ended (completed, or the error code)",
                                ["node", "kind", "outcome"], registry=r)
        self.attempt_seconds = Histogram(
            "onceflow_agent_attempt_seconds", "how long a node agent's attempts ran",
            ["node", "kind"], buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
            registry=r)
        self.lag = Gauge("onceflow_consumer_lag", "records behind the high watermark, per "
                         "input partition", ["processor", "topic", "partition"], registry=r)
        self.state_bytes = Gauge("onceflow_state_bytes", "bytes of a partition's local state "
                                 "on disk", ["processor", "partition"], registry=r)
        self.restore_seconds = Histogram(
            "onceflow_partition_restore_seconds", "how long a partition's state took to "
            "restore from its fact topic when it came to this member", ["processor"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 120), registry=r)
        self.fenced = Counter("onceflow_member_fenced", "times the group moved on from this "
                              "member and it dropped what it had not committed",
                              ["processor"], registry=r)
        self.replicas = Gauge("onceflow_capacity_replicas", "node agents the capacity "
                              "controller wants", registry=r)
        self.queue_depth = Gauge("onceflow_capacity_queue_depth", "units queued at the last "
                                 "capacity window", registry=r)
        self.admission = Gauge("onceflow_admission_mode", "1 for the admission mode in "
                               "force, 0 for the others", ["mode"], registry=r)
        self._on: dict[type[Event], Callable[[Any], None]] = {
            WorkUnitCompleted: self._completed, WorkUnitFailed: self._failed,
            WorkUnitRejected: self._rejected, WorkUnitCancelled: self._cancelled,
            LedgerLineItem: self._line_item, SlotDenied: self._denied,
            TrustScoreUpdated: self._trust, CapacityWindowClosed: self._capacity,
            LedgerChargeHeld: self._held, QueueSampled: self._sampled,
        }
        #: an LLM call's provider, from the ledger's hold, until its line item is written
        #: (the line item names the model only); "unknown" after a restart in between
        self._provider_of: dict[str, str] = {}

    # -- the Sensor hook ------------------------------------------------------------------

    def on_batch(self, processor: str, records: int, facts: int, seconds: float) -> None:
        self.events_in.labels(processor).inc(records)
        self.facts_out.labels(processor).inc(facts)
        self.batch_seconds.labels(processor).observe(seconds)

    def on_dead_letter(self, processor: str, topic: str, error: str) -> None:
        self.dead_letters.labels(processor, topic).inc()

    def on_facts(self, processor: str, facts: Sequence[Event]) -> None:
        on = self._on
        for fact in facts:
            handler = on.get(type(fact))
            if handler is not None:
                handler(fact)

    def on_partitions(self, processor: str, lag: Mapping[tuple[str, int], int],
                      state_bytes: Mapping[int, int]) -> None:
        for (topic, partition), behind in lag.items():
            self.lag.labels(processor, topic, str(partition)).set(behind)
        for partition, size in state_bytes.items():
            self.state_bytes.labels(processor, str(partition)).set(size)

    def on_restore(self, processor: str, partition: int, facts: int, seconds: float) -> None:
        self.restore_seconds.labels(processor).observe(seconds)

    def on_fenced(self, processor: str, reason: str) -> None:
        self.fenced.labels(processor).inc()

    def on_attempt(self, node: str, kind: str, outcome: str, seconds: float) -> None:
        """A node agent ran an attempt (agents are not processors: they call this)."""
        self.attempts.labels(node, kind, outcome).inc()
        self.attempt_seconds.labels(node, kind).observe(seconds)

    # -- what the facts say ---------------------------------------------------------------

    def _completed(self, fact: WorkUnitCompleted) -> None:
        if fact.accepted:
            self.units_settled.labels("completed").inc()
            if fact.finished_at and fact.submitted_at:
                self.settle_seconds.observe(max(0, fact.finished_at - fact.submitted_at) / 1000)

    def _failed(self, fact: WorkUnitFailed) -> None:
        self.units_settled.labels("failed").inc()

    def _rejected(self, fact: WorkUnitRejected) -> None:
        if fact.reason_code not in RESEND_REJECTIONS:
            self.units_settled.labels("rejected").inc()

    def _cancelled(self, fact: WorkUnitCancelled) -> None:
        self.units_settled.labels("cancelled").inc()

    def _held(self, fact: LedgerChargeHeld) -> None:
        self._provider_of[fact.source_event_id] = fact.provider or "unknown"

    def _line_item(self, fact: LedgerLineItem) -> None:
        self.line_items.labels(fact.line_item_type, str(fact.billed).lower()).inc()
        llm = fact.line_item_type == "llm_tokens"
        provider = self._provider_of.pop(fact.source_event_id, "unknown") if llm else "-"
        if not fact.billed:
            return
        model = fact.model or ("-" if fact.line_item_type == "workunit_cpu" else "default")
        self.spend.labels(fact.tenant_id, model, provider).inc(float(fact.total_usd))
        if llm:
            self.tokens.labels(fact.tenant_id, model, provider, "in").inc(fact.llm_tokens_in)
            self.tokens.labels(fact.tenant_id, model, provider, "out").inc(
                fact.llm_tokens_out)

    def _sampled(self, fact: QueueSampled) -> None:
        partition = str(fact.partition)
        # `queue` counts the deferred, the scheduled and the retrying: told apart here
        for state, n in (("deferred", fact.deferred),
                         ("scheduled_or_retrying", max(0, fact.queue - fact.deferred)),
                         ("throttled", fact.throttled), ("running", fact.running)):
            self.in_flight.labels(partition, state).set(n)

    def _denied(self, fact: SlotDenied) -> None:
        self.denials.labels(fact.reason_code).inc()

    def _capacity(self, fact: CapacityWindowClosed) -> None:
        self.replicas.set(fact.replicas)
        self.queue_depth.set(fact.queue_depth)
        for mode in _MODES:
            self.admission.labels(mode).set(1.0 if mode == fact.mode else 0.0)

    def _trust(self, fact: TrustScoreUpdated) -> None:
        self.breakers.labels(fact.node_id).set(_BREAKER[fact.breaker])


_lock = threading.Lock()
_active: PrometheusSensor | None = None


def active_sensor() -> PrometheusSensor | None:
    """This process's sensor, once `serve_metrics` started one (None: no metrics)."""
    return _active


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Serve this process's metrics on `port` (0: a free one); return the port."""
    global _active
    with _lock:
        if _active is None:
            _active = PrometheusSensor()
        server, _thread = start_http_server(port, addr=host, registry=_active.registry)
        return int(server.server_address[1])
